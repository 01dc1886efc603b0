//! The pass-through surface: `/v1/moderations`, `/v1/images/generations` and `/v1/audio/speech` through the engine —
//! the upstream's bytes unchanged (speech: binary, streamed, with its Content-Type), the gateway's headers, fallbacks
//! only to catalog models of the same kind, key rotation, retries, the error shape and 405 with `Allow`.

use reliablegpt::mock_upstream::Behavior;
use reliablegpt::mock_upstream::surface::{SPEECH_BYTES, image_b64, speech_audio};
use serde_json::{Value, json};

use crate::helpers::{GatewayTest, error_of, spawn_gateway, spawn_gateway_with};

const K1: &str = "sk-test-key-one-000000000000000000000001";
const K2: &str = "sk-test-key-two-000000000000000000000002";

/// One endpoint of the surface: its path, a request for a model, its primary model, a same-kind fallback and a model
/// of another kind.
struct Case {
    path: &'static str,
    primary: &'static str,
    same_kind: &'static str,
    other_kind: &'static str,
}

const MODERATIONS: Case = Case {
    path: "/v1/moderations",
    primary: "omni-moderation-latest",
    same_kind: "text-moderation-latest",
    other_kind: "gpt-4o-mini",
};
const IMAGES: Case =
    Case { path: "/v1/images/generations", primary: "dall-e-3", same_kind: "dall-e-2", other_kind: "tts-1" };
const SPEECH: Case = Case { path: "/v1/audio/speech", primary: "tts-1", same_kind: "tts-1-hd", other_kind: "dall-e-3" };
const CASES: [&Case; 3] = [&MODERATIONS, &IMAGES, &SPEECH];

impl Case {
    fn body(&self, model: &str) -> Value {
        match self.path {
            "/v1/moderations" => json!({"model": model, "input": ["I like tea.", "Plan an attack."]}),
            "/v1/images/generations" => json!({"model": model, "prompt": "A lighthouse at dusk", "size": "1024x1024"}),
            _ => json!({"model": model, "input": "Hello there.", "voice": "alloy"}),
        }
    }
}

/// A raw POST; returns status, headers and the body's bytes.
async fn post_raw(
    gw: &GatewayTest,
    path: &str,
    token: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = gw
        .app
        .client
        .post(gw.app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

/// What the mock answers to `body` when asked directly (its answers are deterministic).
async fn direct(gw: &GatewayTest, path: &str, body: &[u8]) -> (String, Vec<u8>) {
    let url = format!("{}{}", gw.mock.base_url(), path.trim_start_matches("/v1"));
    let res = reqwest::Client::new()
        .post(url)
        .bearer_auth(K2)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, res.bytes().await.unwrap().to_vec())
}

/// `created` (a timestamp) is the only part of an answer that depends on when it was made.
fn without_created(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.remove("created");
    }
    v
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn each_endpoint_passes_the_upstreams_answer_through_with_the_gateway_headers() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    for case in CASES {
        gw.mock.clear_requests();
        // Odd spacing: the client's bytes go out unchanged while the model is the requested one.
        let raw = format!("{{ \"extra\" : 1,  {}", &case.body(case.primary).to_string()[1..]);
        let (status, headers, body) = post_raw(&gw, case.path, &token, raw.as_bytes(), &[]).await;
        assert_eq!(status, 200, "{}: {}", case.path, String::from_utf8_lossy(&body));
        assert_eq!(header(&headers, "x-reliablegpt-model"), Some(case.primary));
        assert_eq!(header(&headers, "x-reliablegpt-provider"), Some("openai"));
        assert_eq!(header(&headers, "x-reliablegpt-attempts"), Some("1"));
        assert_eq!(header(&headers, "x-reliablegpt-fallback-reason"), None);
        let seen = gw.mock.requests();
        assert_eq!(seen.len(), 1, "{}", case.path);
        assert_eq!(seen[0].path, case.path);
        assert_eq!(seen[0].api_key.as_deref(), Some(K1));
        assert_eq!(seen[0].body, serde_json::from_str::<Value>(&raw).unwrap());
        let (content_type, expected) = direct(&gw, case.path, raw.as_bytes()).await;
        assert_eq!(header(&headers, "content-type"), Some(content_type.as_str()), "{}", case.path);
        if case.path == "/v1/images/generations" {
            assert_eq!(without_created(&body), without_created(&expected));
        } else {
            assert_eq!(body, expected, "{}: the mock's bytes, unchanged", case.path);
        }
    }
    // What the mock sent, in OpenAI's shapes.
    let (_, _, body) =
        post_raw(&gw, MODERATIONS.path, &token, MODERATIONS.body("omni-moderation-latest").to_string().as_bytes(), &[])
            .await;
    let moderation: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(moderation["results"][1]["flagged"], true);
    assert_eq!(moderation["results"][1]["categories"]["violence"], true);
    assert!(moderation["results"][0]["category_scores"]["hate"].is_f64());
    let b64 = json!({"model": "gpt-image-1", "prompt": "A lighthouse at dusk"});
    let a = gw.post(IMAGES.path, &token, b64, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["data"][0]["b64_json"], image_b64("gpt-image-1", "A lighthouse at dusk", 0));
    assert!(a.body["usage"]["input_tokens"].is_u64());
}

#[tokio::test]
async fn speech_streams_the_exact_audio_bytes_with_the_upstreams_content_type() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let res = gw
        .app
        .client
        .post(gw.app.url(SPEECH.path))
        .bearer_auth(&token)
        .json(
            &json!({"model": "gpt-4o-mini-tts", "input": "Hello there.", "voice": "coral", "response_format": "opus"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "content-type"), Some("audio/opus"));
    assert_eq!(header(res.headers(), "x-reliablegpt-model"), Some("gpt-4o-mini-tts"));
    // Read as a stream, chunk by chunk: it arrives in pieces, and adds up to exactly the mock's audio.
    let mut res = res;
    let mut audio = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = res.chunk().await.unwrap() {
        audio.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert!(chunks >= 1);
    assert_eq!(audio.len(), SPEECH_BYTES);
    assert_eq!(audio, speech_audio("gpt-4o-mini-tts", "Hello there.", "coral"));
}

#[tokio::test]
async fn fallbacks_on_5xx_and_429_go_only_to_models_of_the_same_kind() {
    let gw = spawn_gateway().await;
    for case in CASES {
        gw.mock.clear();
        let token = gw.key_set(&[K1], &[case.other_kind, "unknown-model", case.same_kind]).await;
        gw.mock.script(case.primary, vec![Behavior::server_error()]);
        let a = gw.post(case.path, &token, case.body(case.primary), &[]).await;
        assert_eq!(a.status, 200, "{}: {}", case.path, a.text);
        assert_eq!(a.header("x-reliablegpt-model"), Some(case.same_kind));
        assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("transient"));
        assert_eq!(a.header("x-reliablegpt-attempts"), Some("4"));
        assert_eq!(gw.models_seen(), vec![case.primary, case.primary, case.primary, case.same_kind], "{}", case.path);
        // The fallback's body is the client's with only `model` changed.
        let last = gw.mock.requests().pop().unwrap().body;
        let mut expected = case.body(case.same_kind);
        expected["model"] = json!(case.same_kind);
        assert_eq!(last, expected);

        gw.mock.clear();
        gw.mock.script(case.primary, vec![Behavior::rate_limited(None)]);
        let a =
            gw.post(case.path, &token, case.body(case.primary), &[("x-reliablegpt-fallback", case.same_kind)]).await;
        assert_eq!(a.status, 200, "{}: {}", case.path, a.text);
        assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("rate_limited"));
        assert_eq!(gw.models_seen(), vec![case.primary, case.same_kind], "429 moves on at once");
    }
}

#[tokio::test]
async fn no_fallback_to_another_kind_ends_in_the_error_shape() {
    let gw = spawn_gateway().await;
    for case in CASES {
        gw.mock.clear();
        let token = gw.key_set(&[K1], &[case.other_kind, "unknown-model"]).await;
        gw.mock.script(case.primary, vec![Behavior::overloaded()]);
        let res = gw.app.client.post(gw.app.url(case.path)).bearer_auth(&token).json(&case.body(case.primary)).send();
        let res = res.await.unwrap();
        assert_eq!(res.headers()["x-reliablegpt-attempts"], "3");
        let error = error_of(res, 503).await;
        assert!(error["message"].as_str().unwrap().contains(case.primary), "{error}");
        assert_eq!(gw.models_seen(), vec![case.primary; 3], "{}: nothing of another kind", case.path);
    }
}

#[tokio::test]
async fn a_revoked_key_rotates_to_the_next_one() {
    let gw = spawn_gateway().await;
    gw.mock.set_invalid_key(K1);
    let token = gw.key_set(&[K1, K2], &[]).await;
    for case in CASES {
        gw.mock.clear_requests();
        let a = gw.post(case.path, &token, case.body(case.primary), &[]).await;
        assert_eq!(a.status, 200, "{}: {}", case.path, a.text);
        assert_eq!(a.header("x-reliablegpt-model"), Some(case.primary));
        // The first request learns K1 is invalid; later ones skip it.
        let keys = gw.keys_seen();
        assert_eq!(keys.last().map(String::as_str), Some(K2), "{}", case.path);
        assert!(keys.len() <= 2);
    }
    let seen = gw.mock.requests();
    assert!(seen.iter().all(|r| r.api_key.as_deref() == Some(K2)), "K1 is skipped once marked invalid");
}

#[tokio::test]
async fn bad_input_is_a_400_in_the_error_shape_and_nothing_is_sent() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    for (path, body, param) in [
        (MODERATIONS.path, json!({"model": "omni-moderation-latest"}), "input"),
        (MODERATIONS.path, json!({"input": 42}), "input"),
        (IMAGES.path, json!({"model": "dall-e-3"}), "prompt"),
        (IMAGES.path, json!({"prompt": "x", "stream": true}), "stream"),
        (SPEECH.path, json!({"model": "tts-1", "voice": "alloy"}), "input"),
        (SPEECH.path, json!({"model": "tts-1", "input": "hi"}), "voice"),
        (SPEECH.path, json!({"input": "hi", "voice": "alloy"}), "model"),
        (IMAGES.path, json!({"prompt": "x", "model": 7}), "model"),
    ] {
        let res = gw.app.client.post(gw.app.url(path)).bearer_auth(&token).json(&body).send().await.unwrap();
        let error = error_of(res, 400).await;
        assert_eq!(error["param"], param, "{path} {body}");
    }
    let res = gw.app.client.post(gw.app.url(IMAGES.path)).bearer_auth(&token).body("{nope").send().await.unwrap();
    error_of(res, 400).await;
    let res = gw.app.client.post(gw.app.url(SPEECH.path)).json(&SPEECH.body("tts-1")).send().await.unwrap();
    error_of(res, 401).await;
    assert!(gw.mock.requests().is_empty(), "refused at the edge");

    // The upstream's own refusal comes back unchanged, without fallback.
    let token = gw.key_set(&[K1], &["dall-e-2"]).await;
    let a = gw.post(IMAGES.path, &token, json!({"model": "dall-e-3", "prompt": "x", "n": 2}), &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["message"], "You must provide n=1 for this model.");
    assert_eq!(gw.models_seen(), vec!["dall-e-3"]);
}

#[tokio::test]
async fn default_models_are_planned_while_the_clients_bytes_go_out_unchanged() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let a = gw.post(MODERATIONS.path, &token, json!({"input": "hello"}), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("omni-moderation-latest"));
    let a = gw.post(IMAGES.path, &token, json!({"prompt": "hello"}), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("dall-e-2"));
    let seen = gw.mock.requests();
    assert_eq!(seen[0].body, json!({"input": "hello"}));
    assert_eq!(seen[1].body, json!({"prompt": "hello"}));
}

#[tokio::test]
async fn surface_routes_answer_405_with_allow() {
    let gw = spawn_gateway().await;
    for case in CASES {
        for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
            let res = gw.app.client.request(method.clone(), gw.app.url(case.path)).send().await.unwrap();
            assert_eq!(res.headers().get("allow").map(|v| v.to_str().unwrap()), Some("POST"), "{method} {}", case.path);
            assert_eq!(error_of(res, 405).await["code"], "method_not_allowed");
        }
    }
}

#[tokio::test]
async fn speech_falls_back_before_the_first_byte_and_aborts_a_body_cut_after_it() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[SPEECH.same_kind]).await;
    // Reset right after the headers (no audio byte yet): retried, then the next model answers in full.
    gw.mock.script("tts-1", vec![Behavior::StreamCut { after_tokens: 0 }]);
    let res = gw.app.client.post(gw.app.url(SPEECH.path)).bearer_auth(&token).json(&SPEECH.body("tts-1")).send();
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-reliablegpt-model"), Some("tts-1-hd"));
    assert_eq!(header(res.headers(), "x-reliablegpt-attempts"), Some("4"));
    assert_eq!(res.bytes().await.unwrap().to_vec(), speech_audio("tts-1-hd", "Hello there.", "alloy"));

    // Cut after two chunks: the client's body errors instead of ending cleanly with a truncated file.
    gw.mock.script("tts-1", vec![Behavior::StreamCut { after_tokens: 2 }]);
    let res = gw.app.client.post(gw.app.url(SPEECH.path)).bearer_auth(&token).json(&SPEECH.body("tts-1")).send();
    let mut res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-reliablegpt-model"), Some("tts-1"));
    let mut got = Vec::new();
    let ended = loop {
        match res.chunk().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err(), "a cut audio body must not end cleanly ({} bytes)", got.len());
    assert!(got.len() < SPEECH_BYTES);
    assert_eq!(got[..], speech_audio("tts-1", "Hello there.", "alloy")[..got.len()]);

    // Silent after the headers past the first-byte limit: a timeout, and the fallback answers.
    gw.mock.script("tts-1", vec![Behavior::SlowFirstToken { delay_ms: 2_000 }]);
    let a = gw.post(SPEECH.path, &token, SPEECH.body("tts-1"), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-reliablegpt-model"), Some("tts-1-hd"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("timeout"));
}

/// Streamed audio is bounded like a JSON answer: past `RELIABLEGPT_MAX_UPSTREAM_BODY_BYTES` the client's body is
/// aborted (a cut file must not look whole), not forwarded without end.
#[tokio::test]
async fn a_speech_body_over_the_size_limit_is_aborted() {
    let gw = spawn_gateway_with(|e| {
        e.insert(reliablegpt::config::env::MAX_UPSTREAM_BODY_BYTES.to_owned(), "10000".to_owned());
    })
    .await;
    let token = gw.key_set(&[K1], &[]).await;
    let res = gw.app.client.post(gw.app.url(SPEECH.path)).bearer_auth(&token).json(&SPEECH.body("tts-1")).send();
    let mut res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    let mut got = Vec::new();
    let ended = loop {
        match res.chunk().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    const { assert!(SPEECH_BYTES > 10_000, "the mock's audio must be larger than the limit") };
    assert!(ended.is_err(), "an oversized body must not end cleanly ({} bytes)", got.len());
    assert!(got.len() <= 10_000, "{} bytes forwarded past the limit", got.len());
}

#[tokio::test]
async fn images_wait_past_the_first_byte_limit_for_the_image() {
    // The first-byte limit (600 ms in tests) does not apply: image APIs answer when the image is done.
    let gw = spawn_gateway_with(|_| {}).await;
    let token = gw.key_set(&[K1], &[IMAGES.same_kind]).await;
    gw.mock.script("dall-e-3", vec![Behavior::ok_after(1_200)]);
    let a = gw.post(IMAGES.path, &token, IMAGES.body("dall-e-3"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("dall-e-3"));
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("1"));
    // The request's deadline still bounds it.
    gw.mock.script("dall-e-3", vec![Behavior::ok_after(3_000)]);
    gw.mock.script("dall-e-2", vec![Behavior::ok_after(3_000)]);
    let a = gw.post(IMAGES.path, &token, IMAGES.body("dall-e-3"), &[("x-reliablegpt-timeout-ms", "800")]).await;
    assert_eq!(a.status, 504, "{}", a.text);
}

#[tokio::test]
async fn azure_image_and_speech_deployments_are_used_and_chat_deployments_are_not() {
    let gw = spawn_gateway().await;
    let azure_key = "0123456789abcdef0123456789abcdef";
    let token = gw
        .key_set_with(
            json!([{"provider": "azure", "key": azure_key, "endpoint": gw.mock.azure_endpoint(), "api_version": "2024-10-21",
                    "deployments": {"gpt-4o": "prod-chat", "dall-e-3": "prod-dalle", "tts-1": "prod-tts"}}, K1]),
            json!({"azure_fallback_strategy": ["prod-chat", "prod-dalle"]}),
        )
        .await;
    let a = gw.post(IMAGES.path, &token, IMAGES.body("dall-e-3"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("azure"));
    let seen = gw.mock.requests();
    assert!(
        seen[0].path.starts_with("/openai/deployments/prod-dalle/images/generations?api-version="),
        "{}",
        seen[0].path
    );
    assert_eq!(seen[0].api_key.as_deref(), Some(azure_key));

    gw.mock.clear_requests();
    let token = gw
        .key_set_with(
            json!([{"provider": "azure", "key": azure_key, "endpoint": gw.mock.azure_endpoint(), "api_version": "2024-10-21",
                    "deployments": {"tts-1": "prod-tts"}}, K1]),
            json!({}),
        )
        .await;
    let res = gw.app.client.post(gw.app.url(SPEECH.path)).bearer_auth(&token).json(&SPEECH.body("tts-1")).send();
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-reliablegpt-provider"), Some("azure"));
    assert_eq!(res.bytes().await.unwrap().to_vec(), speech_audio("prod-tts", "Hello there.", "alloy"));
    assert!(gw.mock.requests()[0].path.starts_with("/openai/deployments/prod-tts/audio/speech?"));

    // Azure has no moderations: an Azure-only key set is told so, and nothing is sent.
    gw.mock.clear_requests();
    let token = gw
        .key_set_with(
            json!([{"provider": "azure", "key": azure_key, "endpoint": gw.mock.azure_endpoint(), "api_version": "2024-10-21",
                    "deployments": {"omni-moderation-latest": "prod-mod"}}]),
            json!({}),
        )
        .await;
    let res = gw
        .app
        .client
        .post(gw.app.url(MODERATIONS.path))
        .bearer_auth(&token)
        .json(&MODERATIONS.body("omni-moderation-latest"));
    let error = error_of(res.send().await.unwrap(), 400).await;
    assert!(error["message"].as_str().unwrap().contains("Azure"), "{error}");
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn the_model_list_includes_the_new_kinds() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let res = gw.app.client.get(gw.app.url("/v1/models")).bearer_auth(&token).send().await.unwrap();
    let list: Value = res.json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    for model in [
        "omni-moderation-latest",
        "text-moderation-latest",
        "dall-e-3",
        "dall-e-2",
        "gpt-image-1",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
    ] {
        assert!(ids.contains(&model), "{model} in {ids:?}");
    }
}

const BOUNDARY: &str = "----rgptTestBoundary7MA4YWxkTrZu0gW";

/// A transcription form: the audio (binary, with CRLF and dashes to trip naive parsers), `model`, and two more
/// fields that must arrive unchanged.
fn form(model: Option<&str>, file: Option<&[u8]>, response_format: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let mut field = |name: &str, value: &[u8], file: bool| {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        if file {
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"talk.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n")
                    .as_bytes(),
            );
        } else {
            body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    };
    if let Some(file) = file {
        field("file", file, true);
    }
    if let Some(model) = model {
        field("model", model.as_bytes(), false);
    }
    field("language", b"en", false);
    field("response_format", response_format.as_bytes(), false);
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn audio_file() -> Vec<u8> {
    let mut audio = speech_audio("tts-1", "a recording", "alloy");
    // Looks like a delimiter, but is not this form's boundary (which, by the rules, never occurs in the content).
    audio.extend_from_slice(format!("\r\n--{}\r\n--", &BOUNDARY[..BOUNDARY.len() - 1]).as_bytes());
    audio.extend_from_slice(&speech_audio("tts-1", "more", "alloy")[..1000]);
    audio
}

async fn transcribe(gw: &GatewayTest, token: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = gw
        .app
        .client
        .post(gw.app.url("/v1/audio/transcriptions"))
        .bearer_auth(token)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_transcription_upload_is_forwarded_byte_for_byte_and_a_fallback_rewrites_only_the_model_part() {
    use reliablegpt::mock_upstream::surface::transcript_of;
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["tts-1", "unknown-model", "gpt-4o-transcribe"]).await;
    let audio = audio_file();
    let res = transcribe(&gw, &token, form(Some("whisper-1"), Some(&audio), "json"), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-reliablegpt-model"), Some("whisper-1"));
    assert_eq!(header(res.headers(), "content-type"), Some("application/json"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"text": transcript_of("whisper-1", "talk.mp3", &audio)}), "the file arrived intact");
    let seen = gw.mock.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/audio/transcriptions");
    assert_eq!((seen.body["language"].as_str(), seen.body["model"].as_str()), (Some("en"), Some("whisper-1")));
    assert_eq!(seen.body["file"]["content_type"], "audio/mpeg");

    // 5xx: retried, then the same-kind fallback, skipping the speech model and the unknown one; only `model` changed.
    gw.mock.clear_requests();
    gw.mock.script("whisper-1", vec![Behavior::server_error()]);
    let res = transcribe(&gw, &token, form(Some("whisper-1"), Some(&audio), "text"), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-reliablegpt-model"), Some("gpt-4o-transcribe"));
    assert_eq!(header(res.headers(), "x-reliablegpt-fallback-reason"), Some("transient"));
    assert_eq!(header(res.headers(), "content-type"), Some("text/plain; charset=utf-8"), "the upstream's type");
    assert_eq!(res.text().await.unwrap(), format!("{}\n", transcript_of("gpt-4o-transcribe", "talk.mp3", &audio)));
    assert_eq!(gw.models_seen(), vec!["whisper-1", "whisper-1", "whisper-1", "gpt-4o-transcribe"]);
    let last = gw.mock.requests().pop().unwrap().body;
    assert_eq!(last["language"], "en");
    assert_eq!(last["response_format"], "text");

    // 429 moves on; a revoked key rotates.
    gw.mock.clear_requests();
    gw.mock.script("whisper-1", vec![Behavior::rate_limited(None)]);
    gw.mock.set_invalid_key(K1);
    let token = gw.key_set(&[K1, K2], &["gpt-4o-transcribe"]).await;
    let res = transcribe(&gw, &token, form(Some("whisper-1"), Some(&audio), "json"), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(res.headers(), "x-reliablegpt-model"), Some("gpt-4o-transcribe"));
    assert_eq!(gw.keys_seen(), vec![K1, K2, K2], "K1 refused, K2 rate-limited on whisper-1, K2 on the fallback");
}

#[tokio::test]
async fn transcription_errors_are_clear_and_nothing_is_sent() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["tts-1"]).await;
    let audio = audio_file();
    let res = gw
        .app
        .client
        .post(gw.app.url("/v1/audio/transcriptions"))
        .bearer_auth(&token)
        .json(&json!({"model": "whisper-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res, 400).await["param"], "content-type");
    let res = transcribe(&gw, &token, form(Some("whisper-1"), None, "json"), &[]).await;
    assert_eq!(error_of(res, 400).await["param"], "file");
    let res = transcribe(&gw, &token, form(None, Some(&audio), "json"), &[]).await;
    assert_eq!(error_of(res, 400).await["param"], "model");
    let mut cut = form(Some("whisper-1"), Some(&audio), "json");
    cut.truncate(cut.len() - 10);
    let error = error_of(transcribe(&gw, &token, cut, &[]).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("multipart"), "{error}");
    // Over the size bound: 413, before anything reaches an upstream.
    let huge = form(Some("whisper-1"), Some(&vec![7u8; 26 * 1024 * 1024 + 1]), "json");
    let error = error_of(transcribe(&gw, &token, huge, &[]).await, 413).await;
    assert_eq!(error["code"], "payload_too_large");
    assert!(gw.mock.requests().is_empty());
    // No fallback to another kind.
    gw.mock.script("whisper-1", vec![Behavior::overloaded()]);
    let res = transcribe(&gw, &token, form(Some("whisper-1"), Some(&audio), "json"), &[]).await;
    error_of(res, 503).await;
    assert_eq!(gw.models_seen(), vec!["whisper-1"; 3]);
    let res = gw.app.client.get(gw.app.url("/v1/audio/transcriptions")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "POST");
    error_of(res, 405).await;
}
