"""The official OpenAI SDK against the gateway, answered by Anthropic and Gemini (the mock speaking their dialects):
the client never leaves chat completions while its requests fall back across providers."""

import json

import openai
import pytest

from conftest import http_json

FULL_ANSWER_START = "alpha bravo charlie"


def provider_key_set(stack, keys, fallbacks):
    created = http_json(
        "POST",
        f"{stack.gateway}/v1/keys",
        {"user_email": "sdk@example.com", "keys": keys, "policy": {"fallback_strategy": fallbacks}},
    )
    return created["token"]


def client_for(stack, token):
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=token, max_retries=0)


@pytest.fixture(scope="module")
def mixed_token(stack):
    return provider_key_set(
        stack,
        [
            "sk-sdk-test-key-00000000000000000000001",
            {"provider": "anthropic", "key": "sk-ant-sdk-00000000000000000000000001", "base_url": stack.mock},
            {"provider": "gemini", "key": "AIzaSdkTest000000000000000000000000001", "base_url": stack.mock},
        ],
        ["claude-sonnet-4-5", "gemini-2.5-pro"],
    )


@pytest.fixture()
def mixed(stack, mixed_token):
    stack.clear()
    return client_for(stack, mixed_token)


def test_openai_outage_is_answered_by_claude_then_gemini(stack, mixed):
    stack.script("gpt-4o", [{"kind": "error", "status": 503}])
    raw = mixed.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Say the alphabet."}]
    )
    res = raw.parse()
    assert raw.headers["x-reliablegpt-provider"] == "anthropic"
    assert res.model == "claude-sonnet-4-5"
    assert res.choices[0].message.content.startswith(FULL_ANSWER_START)
    assert res.choices[0].finish_reason == "stop"
    assert res.usage.completion_tokens > 0

    stack.script("claude-sonnet-4-5", [{"kind": "error", "status": 529, "type": "overloaded_error"}])
    raw = mixed.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Say the alphabet."}]
    )
    assert raw.headers["x-reliablegpt-provider"] == "gemini"
    assert raw.parse().model == "gemini-2.5-pro"


def test_a_streamed_answer_from_each_provider_reads_like_openais(stack, mixed):
    for model in ("claude-haiku-4-5", "gemini-2.5-flash"):
        stream = mixed.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say the alphabet."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text.startswith(FULL_ANSWER_START), model
        assert finishes == ["stop"], model
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, model
        assert all(c.model == model for c in chunks)


def test_tool_calls_round_trip_through_claude(stack, mixed):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    res = mixed.chat.completions.create(
        model="claude-sonnet-4-5", messages=messages, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = res.choices[0].message.tool_calls[0]
    assert res.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"mock": True}
    messages += [res.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]
    follow = mixed.chat.completions.create(model="claude-sonnet-4-5", messages=messages, tools=tools)
    assert follow.choices[0].message.content.startswith(FULL_ANSWER_START)


def test_an_untranslatable_field_is_a_400_naming_it(stack, mixed):
    with pytest.raises(openai.BadRequestError) as caught:
        mixed.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[{"role": "user", "content": "Hi"}],
            logit_bias={"50256": -100},
        )
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "logit_bias"
