//! What a scripted request gets: the healthy answer, an error, or one of the socket-level faults.

use serde::{Deserialize, Serialize};

/// One step of a script (see [`super::MockUpstream::script`]).
///
/// Deserializable with `{"kind": "snake_case_name", ...fields}`, so the same scripts can be set over HTTP
/// (`POST /_mock/script`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Behavior {
    /// A healthy answer after `latency_ms` plus a uniform random `0..=jitter_ms`.
    Ok {
        #[serde(default)]
        latency_ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    /// An OpenAI error body `{"error":{"message","type","param","code"}}` with this status (on Anthropic and Gemini
    /// routes their own bodies: the error type or Google status of the status, or `type` when it is one of theirs;
    /// `code` and `param` are not used there; an empty message gets their stock text).
    ///
    /// `{model}` in `message` is replaced by the request's model (or Azure deployment). An empty message is replaced
    /// by a stock text for the status. `retry_after` becomes a `Retry-After` header.
    Error {
        status: u16,
        #[serde(default)]
        code: Option<String>,
        #[serde(default = "default_error_type")]
        r#type: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        param: Option<String>,
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// 400 `context_length_exceeded` (or the same with a null code when `with_code` is false) when the estimated
    /// prompt tokens (characters / 4, rounded up) exceed `max_tokens`; otherwise healthy. Anthropic: 400
    /// "prompt is too long: N tokens > M maximum"; Gemini: 400 "The input token count (N) exceeds the maximum number of
    /// tokens allowed (M)." (`with_code` unused).
    ContextLimit { max_tokens: u32, with_code: bool },
    /// Read the request, then reset the connection (RST) without writing anything.
    ResetBeforeHeaders,
    /// Read the request and never answer; the connection is held until the client closes it.
    NoResponse,
    /// Wait before the headers (non-streaming) or, after sending the headers, before the first SSE event (streaming).
    SlowFirstToken { delay_ms: u64 },
    /// Streaming: the role chunk and `after_tokens` content chunks, then a reset without the terminating chunk.
    /// Non-streaming: like [`Behavior::ResetBeforeHeaders`].
    StreamCut { after_tokens: u32 },
    /// Streaming: `after_tokens` content chunks, then silence until the client leaves.
    /// Non-streaming: like [`Behavior::NoResponse`].
    StreamStall { after_tokens: u32 },
    /// Streaming: `after_tokens` content chunks, then an SSE comment (`: keep-alive`; Anthropic: its `event: ping`)
    /// every `every_ms` and nothing else
    /// until the client leaves (a hostile or broken upstream that looks alive). Non-streaming: like
    /// [`Behavior::NoResponse`].
    StreamKeepAlive { after_tokens: u32, every_ms: u64 },
    /// Streaming: the whole stream (headers, every event, `[DONE]` and the last chunk) in one write, as events that
    /// piled up on the way arrive together. Non-streaming: healthy.
    StreamBurst,
    /// Streaming: after `at_token` content chunks, one `data: {not json` event (Anthropic: as a `content_block_delta`),
    /// then the rest as usual.
    /// Non-streaming: healthy.
    MalformedChunk { at_token: u32 },
    /// Streaming: the whole answer and the `finish_reason: "stop"` chunk but no `data: [DONE]`; the chunked body is
    /// ended properly (Anthropic: no `message_delta` nor `message_stop`; Gemini: no chunk carries `finishReason`).
    /// Non-streaming: healthy.
    MissingDone,
    /// Streaming: `after_tokens` content pieces, then the dialect's in-band error and the end of the body (the stream
    /// fails midway, as an overloaded model's does): Anthropic `event: error` with `{"type":"error","error":{..}}`
    /// (type by `status`), Gemini a last `data: {"error":{"code","message","status"}}`, OpenAI chat and completions
    /// `data: {"error":{..}}` without `[DONE]`, the Responses API an `error` event; speech is cut. `status` defaults
    /// to the dialect's overload: 529 (Anthropic), 503 (Gemini), 500 (OpenAI). Non-streaming: that error as the HTTP
    /// status with the dialect's body.
    StreamError {
        after_tokens: u32,
        #[serde(default)]
        status: Option<u16>,
    },
    /// 400 `invalid_request_error` when the last message is an assistant prefill, with the message of models that never
    /// accept prefill; any other request is served healthily, including an instruction to continue (a last user turn
    /// quoting the cut-off answer). One step refuses one prefill; for a model that refuses every prefill see
    /// [`super::MockUpstream::set_rejects_prefill`].
    RejectPrefill,
    /// From the moment the script was set: `down_ms` of 503 (as [`Behavior::overloaded`]; Anthropic 529
    /// `overloaded_error`, Gemini 503 `UNAVAILABLE`), then `up_ms` healthy, repeating.
    Flapping { down_ms: u64, up_ms: u64 },
}

fn default_error_type() -> String {
    "server_error".to_owned()
}

impl Behavior {
    /// A healthy answer with no added latency.
    pub fn ok() -> Behavior {
        Behavior::Ok { latency_ms: 0, jitter_ms: 0 }
    }

    /// A healthy answer after `latency_ms`.
    pub fn ok_after(latency_ms: u64) -> Behavior {
        Behavior::Ok { latency_ms, jitter_ms: 0 }
    }

    fn error(status: u16, code: Option<&str>, r#type: &str, message: &str) -> Behavior {
        Behavior::Error {
            status,
            code: code.map(str::to_owned),
            r#type: r#type.to_owned(),
            message: message.to_owned(),
            param: None,
            retry_after: None,
        }
    }

    /// 500, type `server_error`.
    pub fn server_error() -> Behavior {
        Behavior::error(500, None, "server_error", SERVER_ERROR_MESSAGE)
    }

    /// 503, type `server_error` (OpenAI's "overloaded").
    pub fn overloaded() -> Behavior {
        Behavior::error(503, None, "server_error", OVERLOADED_MESSAGE)
    }

    /// 429, code `rate_limit_exceeded`, type `requests`, with an optional `Retry-After` header.
    pub fn rate_limited(retry_after: Option<&str>) -> Behavior {
        Behavior::Error {
            status: 429,
            code: Some("rate_limit_exceeded".to_owned()),
            r#type: "requests".to_owned(),
            message: "Rate limit reached for {model} in organization org-mock on requests per min (RPM): Limit 3, \
                      Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits \
                      to learn more."
                .to_owned(),
            param: None,
            retry_after: retry_after.map(str::to_owned),
        }
    }

    /// 400, code `content_filter` (Azure OpenAI's prompt filter).
    pub fn content_filter() -> Behavior {
        Behavior::Error {
            status: 400,
            code: Some("content_filter".to_owned()),
            r#type: "invalid_request_error".to_owned(),
            message: "The response was filtered due to the prompt triggering Azure OpenAI's content management \
                      policy. Please modify your prompt and retry. To learn more about our content filtering policies \
                      please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
                .to_owned(),
            param: Some("prompt".to_owned()),
            retry_after: None,
        }
    }

    /// 404, code `model_not_found`, naming the requested model.
    pub fn model_not_found() -> Behavior {
        Behavior::error(
            404,
            Some("model_not_found"),
            "invalid_request_error",
            "The model `{model}` does not exist or you do not have access to it.",
        )
    }

    /// 400, null code, type `invalid_request_error`.
    pub fn bad_request() -> Behavior {
        Behavior::error(400, None, "invalid_request_error", BAD_REQUEST_MESSAGE)
    }
}

pub(crate) const SERVER_ERROR_MESSAGE: &str =
    "The server had an error while processing your request. Sorry about that!";
pub(crate) const OVERLOADED_MESSAGE: &str = "The server is overloaded or not ready yet.";
/// What Anthropic's models that never accept prefill answer (also behind OpenAI-compatible proxies).
pub(crate) const PREFILL_REJECTED_MESSAGE: &str =
    "This model does not support assistant message prefill. The conversation must end with a user message.";
pub(crate) const BAD_REQUEST_MESSAGE: &str =
    "Invalid value for 'temperature': expected a decimal, but got a string instead.";

/// The stock message for an `Error` step scripted without one.
pub(crate) fn default_message(status: u16) -> &'static str {
    match status {
        400 => BAD_REQUEST_MESSAGE,
        401 => "Invalid authentication.",
        403 => "You are not allowed to sample from this model.",
        404 => "The model `{model}` does not exist or you do not have access to it.",
        429 => "Rate limit reached for {model}. Please try again in 20s.",
        503 => OVERLOADED_MESSAGE,
        _ => SERVER_ERROR_MESSAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scripts_deserialize_from_json() {
        let steps: Vec<Behavior> = serde_json::from_value(json!([
            {"kind": "ok"},
            {"kind": "ok", "latency_ms": 5, "jitter_ms": 2},
            {"kind": "error", "status": 429, "type": "requests", "code": "rate_limit_exceeded", "retry_after": "2"},
            {"kind": "context_limit", "max_tokens": 10, "with_code": false},
            {"kind": "reset_before_headers"},
            {"kind": "stream_cut", "after_tokens": 3},
            {"kind": "flapping", "down_ms": 1, "up_ms": 2},
            {"kind": "stream_error", "after_tokens": 2},
            {"kind": "stream_error", "after_tokens": 0, "status": 500}
        ]))
        .unwrap();
        assert_eq!(steps[0], Behavior::ok());
        assert_eq!(steps[1], Behavior::Ok { latency_ms: 5, jitter_ms: 2 });
        let Behavior::Error { status, code, r#type, message, param, retry_after } = &steps[2] else { panic!() };
        assert_eq!((*status, code.as_deref(), r#type.as_str()), (429, Some("rate_limit_exceeded"), "requests"));
        assert_eq!((message.as_str(), param, retry_after.as_deref()), ("", &None, Some("2")));
        assert_eq!(steps[3], Behavior::ContextLimit { max_tokens: 10, with_code: false });
        assert_eq!(steps[6], Behavior::Flapping { down_ms: 1, up_ms: 2 });
        assert_eq!(steps[7], Behavior::StreamError { after_tokens: 2, status: None });
        assert_eq!(steps[8], Behavior::StreamError { after_tokens: 0, status: Some(500) });
        assert!(serde_json::from_value::<Behavior>(json!({"kind": "nope"})).is_err());
    }

    #[test]
    fn constructors_round_trip_through_json() {
        for behavior in [
            Behavior::server_error(),
            Behavior::overloaded(),
            Behavior::rate_limited(Some("1")),
            Behavior::content_filter(),
            Behavior::model_not_found(),
            Behavior::bad_request(),
            Behavior::MissingDone,
        ] {
            let json = serde_json::to_value(&behavior).unwrap();
            assert_eq!(serde_json::from_value::<Behavior>(json).unwrap(), behavior);
        }
        assert_eq!(serde_json::to_value(Behavior::bad_request()).unwrap()["type"], "invalid_request_error");
    }
}
