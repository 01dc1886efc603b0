"""The mock upstream speaks Anthropic's Messages API as the official `anthropic` SDK expects: `messages.create`
(plain and `stream=True`), the `messages.stream` helper, tool use, prefill, limits, and the SDK's own error classes
for each status, straight against the mock (no gateway)."""

import anthropic
import httpx2
import pytest

FULL = ("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec "
        "romeo sierra tango uniform victor whiskey xray.")
MODEL = "claude-sonnet-4-5"
KEY = "sk-ant-api03-mock-direct-00000000000000000000001"
ASK = [{"role": "user", "content": "Say the NATO alphabet."}]
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def claude(mock):
    mock.clear()
    return anthropic.Anthropic(base_url=mock.url, api_key=KEY, max_retries=0)


def ask(client, **kwargs):
    kwargs.setdefault("messages", ASK)
    kwargs.setdefault("max_tokens", 1024)
    return client.messages.create(model=MODEL, **kwargs)


def test_create_answers_a_message_object(claude, mock):
    msg = ask(claude, system="Be brief.")
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == FULL
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)
    assert msg.usage.output_tokens == 24 and msg.usage.input_tokens > 0
    seen = mock.requests()[-1]
    assert (seen["path"], seen["model"], seen["api_key"], seen["stream"]) == ("/v1/messages", MODEL, KEY, False)
    assert seen["body"]["system"] == "Be brief."


def test_max_tokens_and_stop_sequences_end_the_answer_early(claude):
    msg = ask(claude, max_tokens=3)
    assert (msg.content[0].text, msg.stop_reason, msg.usage.output_tokens) == ("alpha bravo charlie", "max_tokens", 3)
    msg = ask(claude, stop_sequences=["zulu", "delta"])
    assert msg.content[0].text == "alpha bravo charlie "
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "delta")


def test_a_prefill_is_continued_and_blocks_count_as_text(claude):
    prefill = "alpha bravo charlie"
    msg = ask(claude, messages=ASK + [{"role": "assistant", "content": [{"type": "text", "text": prefill}]}])
    assert prefill + msg.content[0].text == FULL
    with pytest.raises(anthropic.BadRequestError) as err:
        ask(claude, messages=ASK + [{"role": "assistant", "content": "alpha "}])
    assert "trailing whitespace" in err.value.message


def test_the_stream_helper_accumulates_the_whole_message(claude):
    with claude.messages.stream(model=MODEL, max_tokens=1024, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == FULL
    assert final.content[0].text == FULL
    assert (final.stop_reason, final.usage.output_tokens) == ("end_turn", 24)
    assert final.usage.input_tokens > 0


def test_raw_stream_events_come_in_anthropics_order(claude, mock):
    events = list(ask(claude, stream=True, max_tokens=5))
    kinds = [e.type for e in events]
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * 5 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.content == [] and events[0].message.usage.input_tokens > 0
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "alpha bravo charlie delta echo"
    assert (events[-2].delta.stop_reason, events[-2].usage.output_tokens) == ("max_tokens", 5)
    assert mock.requests()[-1]["stream"] is True


def test_a_forced_tool_is_used_plain_and_streamed_and_its_result_answered(claude):
    for choice in [{"type": "tool", "name": "get_weather"}, {"type": "any"}]:
        msg = ask(claude, tools=[WEATHER], tool_choice=choice)
        assert msg.stop_reason == "tool_use"
        (use,) = msg.content
        assert (use.type, use.name, use.input) == ("tool_use", "get_weather", {"mock": True})
        assert use.id.startswith("toolu_")
    with claude.messages.stream(model=MODEL, max_tokens=1024, messages=ASK, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert (final.content[0].name, final.content[0].input) == ("get_weather", {"mock": True})
    # Without a forced choice the model answers; and a tool's result gets a text answer.
    assert ask(claude, tools=[WEATHER]).content[0].text == FULL
    messages = ASK + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]},
    ]
    msg = ask(claude, messages=messages, tools=[WEATHER], tool_choice={"type": "any"})
    assert (msg.stop_reason, msg.content[0].text) == ("end_turn", FULL)


@pytest.mark.parametrize("status,error_class,error_type", [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"),
    (404, anthropic.NotFoundError, "not_found_error"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (503, anthropic.ServiceUnavailableError, "overloaded_error"),
    (529, anthropic.OverloadedError, "overloaded_error"),
])
def test_scripted_errors_raise_the_sdks_class_for_the_status(claude, mock, status, error_class, error_type):
    mock.script(MODEL, [{"kind": "error", "status": status, "retry_after": "7"}])
    with pytest.raises(error_class) as err:
        ask(claude)
    assert err.value.status_code == status
    assert err.value.body == {"type": "error", "error": {"type": error_type, "message": err.value.body["error"]["message"]}}
    assert err.value.body["error"]["message"]
    assert err.value.response.headers["retry-after"] == "7"


def test_overloaded_is_529_as_anthropic_sends_it(claude, mock):
    mock.script(MODEL, [{"kind": "flapping", "down_ms": 60000, "up_ms": 1}])
    with pytest.raises(anthropic.OverloadedError) as err:
        ask(claude)
    assert (err.value.status_code, err.value.body["error"]["message"]) == (529, "Overloaded")


def test_keys_credit_context_and_prefill_refusals(claude, mock):
    mock.invalid_key(KEY)
    with pytest.raises(anthropic.AuthenticationError) as err:
        ask(claude)
    assert err.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    mock.clear()
    mock.no_quota_key(KEY)
    with pytest.raises(anthropic.BadRequestError) as err:
        ask(claude)
    assert err.value.body["error"]["message"].startswith("Your credit balance is too low")
    mock.clear()
    mock.script(MODEL, [{"kind": "context_limit", "max_tokens": 2, "with_code": True}])
    with pytest.raises(anthropic.BadRequestError) as err:
        ask(claude)
    assert err.value.body["error"]["message"].startswith("prompt is too long: ")
    assert err.value.body["error"]["message"].endswith(" tokens > 2 maximum")
    mock.rejects_prefill(MODEL)
    with pytest.raises(anthropic.BadRequestError) as err:
        ask(claude, messages=ASK + [{"role": "assistant", "content": "alpha bravo"}])
    assert "does not support assistant message prefill" in err.value.message


def test_an_in_band_stream_error_raises_after_the_text_so_far(claude, mock):
    mock.script(MODEL, [{"kind": "stream_error", "after_tokens": 3}])
    text = []
    with pytest.raises(anthropic.APIStatusError) as err:
        with claude.messages.stream(model=MODEL, max_tokens=1024, messages=ASK) as stream:
            for piece in stream.text_stream:
                text.append(piece)
    assert "".join(text) == "alpha bravo charlie"
    assert err.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_a_cut_stream_fails_the_read_instead_of_ending_cleanly(claude, mock):
    mock.script(MODEL, [{"kind": "stream_cut", "after_tokens": 2}])
    text = []
    with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError, anthropic.APIConnectionError)):
        for event in ask(claude, stream=True):
            if event.type == "content_block_delta":
                text.append(event.delta.text)
    assert "".join(text) == "alpha bravo"
