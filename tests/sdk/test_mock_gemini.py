"""The mock upstream speaks the Gemini API as the official `google-genai` SDK expects: `models.generate_content` and
`generate_content_stream` (server-sent events), limits, prefill, function calling, and `errors.ClientError` /
`errors.ServerError` with Google's codes and statuses, straight against the mock (no gateway)."""

import pytest
from google import genai
from google.genai import errors, types

FULL = ("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec "
        "romeo sierra tango uniform victor whiskey xray.")
MODEL = "gemini-2.5-flash"
KEY = "AIzaSyMockDirect000000000000000000000001"
ASK = "Say the NATO alphabet."
WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="Weather in a city",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]))])
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


@pytest.fixture
def gemini(mock):
    mock.clear()
    # v1beta, as the gateway calls it; the SDK's own default (v1) is served too (see the last test).
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=mock.url, api_version="v1beta"))


def ask(client, contents=ASK, **config):
    return client.models.generate_content(model=MODEL, contents=contents,
                                          config=types.GenerateContentConfig(**config) if config else None)


def test_generate_content_answers_a_response(gemini, mock):
    res = ask(gemini)
    assert res.text == FULL
    (candidate,) = res.candidates
    assert (candidate.finish_reason, candidate.content.role, candidate.index) == (types.FinishReason.STOP, "model", 0)
    usage = res.usage_metadata
    assert usage.candidates_token_count == 24 and usage.prompt_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + 24
    assert res.model_version == MODEL and res.response_id
    seen = mock.requests()[-1]
    assert seen["path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert (seen["model"], seen["api_key"], seen["stream"]) == (MODEL, KEY, False)
    assert seen["body"]["contents"] == [{"role": "user", "parts": [{"text": ASK}]}]
    longer = ask(gemini, system_instruction="Be brief. " * 20)
    assert longer.usage_metadata.prompt_token_count > usage.prompt_token_count
    assert mock.requests()[-1]["body"]["systemInstruction"]["parts"][0]["text"].startswith("Be brief.")


def test_max_output_tokens_and_stop_sequences_end_the_answer_early(gemini):
    res = ask(gemini, max_output_tokens=2, temperature=0.2, top_p=0.9)
    assert (res.text, res.candidates[0].finish_reason) == ("alpha bravo", types.FinishReason.MAX_TOKENS)
    assert res.usage_metadata.candidates_token_count == 2
    res = ask(gemini, stop_sequences=["charlie"])
    assert (res.text, res.candidates[0].finish_reason) == ("alpha bravo ", types.FinishReason.STOP)


def test_a_model_turn_last_is_continued(gemini):
    contents = [types.Content(role="user", parts=[types.Part(text=ASK)]),
                types.Content(role="model", parts=[types.Part(text="alpha bravo")])]
    assert "alpha bravo" + ask(gemini, contents).text == FULL


def test_the_stream_is_one_response_per_piece_the_last_with_finish_and_usage(gemini, mock):
    chunks = list(gemini.models.generate_content_stream(model=MODEL, contents=ASK))
    assert len(chunks) == 24
    assert "".join(c.text for c in chunks) == FULL
    assert [c.candidates[0].finish_reason for c in chunks[:-1]] == [None] * 23
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == 24
    assert mock.requests()[-1]["path"] == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    chunks = list(gemini.models.generate_content_stream(
        model=MODEL, contents=ASK, config=types.GenerateContentConfig(max_output_tokens=3)))
    assert "".join(c.text for c in chunks) == "alpha bravo charlie"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


def test_function_calling_in_mode_any_plain_and_streamed_and_its_response_answered(gemini):
    forced = dict(tools=[WEATHER], automatic_function_calling=NO_AFC,
                  tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")))
    res = ask(gemini, **forced)
    (call,) = res.function_calls
    assert (call.name, call.args) == ("get_weather", {"mock": True})
    assert res.candidates[0].finish_reason == types.FinishReason.STOP
    chunks = list(gemini.models.generate_content_stream(
        model=MODEL, contents=ASK, config=types.GenerateContentConfig(**forced)))
    assert [(c.name, c.args) for ch in chunks for c in (ch.function_calls or [])] == [("get_weather", {"mock": True})]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    # AUTO answers in text; a function's response gets a text answer even in mode ANY.
    assert ask(gemini, tools=[WEATHER], automatic_function_calling=NO_AFC).text == FULL
    contents = [types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
                types.Content(role="model", parts=[types.Part(function_call=call)]),
                types.Content(role="user", parts=[types.Part.from_function_response(
                    name="get_weather", response={"celsius": 18})])]
    assert ask(gemini, contents, **forced).text == FULL


@pytest.mark.parametrize("status,error_class,google_status", [
    (400, errors.ClientError, "INVALID_ARGUMENT"),
    (403, errors.ClientError, "PERMISSION_DENIED"),
    (404, errors.ClientError, "NOT_FOUND"),
    (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
    (500, errors.ServerError, "INTERNAL"),
    (503, errors.ServerError, "UNAVAILABLE"),
    (504, errors.ServerError, "DEADLINE_EXCEEDED"),
])
def test_scripted_errors_raise_the_sdks_class_with_googles_status(gemini, mock, status, error_class, google_status):
    mock.script(MODEL, [{"kind": "error", "status": status}])
    with pytest.raises(error_class) as err:
        ask(gemini)
    assert (err.value.code, err.value.status) == (status, google_status)
    assert err.value.message
    if status == 404:
        assert err.value.message.startswith(f"models/{MODEL} is not found for API version v1beta")


def test_invalid_key_no_quota_context_limit_and_retry_info(gemini, mock):
    mock.invalid_key(KEY)
    with pytest.raises(errors.ClientError) as err:
        ask(gemini)
    assert (err.value.code, err.value.status) == (400, "INVALID_ARGUMENT")
    assert err.value.message == "API key not valid. Please pass a valid API key."
    assert err.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    mock.clear()
    mock.no_quota_key(KEY)
    with pytest.raises(errors.ClientError) as err:
        ask(gemini)
    assert (err.value.code, err.value.status) == (429, "RESOURCE_EXHAUSTED")
    mock.clear()
    mock.script(MODEL, [{"kind": "context_limit", "max_tokens": 2, "with_code": False}])
    with pytest.raises(errors.ClientError) as err:
        ask(gemini)
    assert err.value.code == 400
    assert err.value.message.startswith("The input token count (")
    assert err.value.message.endswith("exceeds the maximum number of tokens allowed (2).")
    mock.script(MODEL, [{"kind": "error", "status": 429, "retry_after": "20"}])
    with pytest.raises(errors.ClientError) as err:
        ask(gemini)
    assert err.value.details["error"]["details"][0]["retryDelay"] == "20s"


def test_an_in_band_stream_error_raises_after_the_text_so_far(gemini, mock):
    mock.script(MODEL, [{"kind": "stream_error", "after_tokens": 3}])
    text = []
    with pytest.raises(errors.ServerError) as err:
        for chunk in gemini.models.generate_content_stream(model=MODEL, contents=ASK):
            text.append(chunk.text)
    assert "".join(text) == "alpha bravo charlie"
    assert (err.value.code, err.value.status) == (503, "UNAVAILABLE")
    assert err.value.message == "The model is overloaded. Please try again later."


def test_a_stream_missing_its_finish_has_no_finish_reason(gemini, mock):
    mock.script(MODEL, [{"kind": "missing_done"}])
    chunks = list(gemini.models.generate_content_stream(model=MODEL, contents=ASK))
    assert "".join(c.text for c in chunks) == FULL
    assert all(c.candidates[0].finish_reason is None for c in chunks)


def test_the_sdks_default_api_version_is_served_and_a_missing_key_refused(mock):
    mock.clear()
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=mock.url))
    assert client.models.generate_content(model=MODEL, contents=ASK).text == FULL
    assert mock.requests()[-1]["path"] == f"/v1/models/{MODEL}:generateContent"
    keyless = genai.Client(api_key="unused", http_options=types.HttpOptions(
        base_url=mock.url, api_version="v1beta", headers={"x-goog-api-key": ""}))
    with pytest.raises(errors.ClientError) as err:
        keyless.models.generate_content(model=MODEL, contents=ASK)
    assert (err.value.code, err.value.status) == (403, "PERMISSION_DENIED")
