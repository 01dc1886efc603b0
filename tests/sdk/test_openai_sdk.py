"""The real `openai` Python SDK against reliablegpt: apps change only base_url and api_key."""

import openai
import pytest

FULL_ANSWER = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray."
)
MESSAGES = [{"role": "user", "content": "Say the alphabet."}]


def client(stack, token):
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=token, max_retries=0)


def test_chat_completion(stack):
    stack.clear()
    c = client(stack, stack.key_set([]))
    res = c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert res.choices[0].message.content == FULL_ANSWER
    assert res.model == "gpt-4o"
    assert res.usage.completion_tokens == 24


def test_streaming(stack):
    stack.clear()
    c = client(stack, stack.key_set([]))
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == FULL_ANSWER
    assert chunks[-1].usage.completion_tokens == 24


def test_fallback_is_visible_in_the_response_model_and_headers(stack):
    stack.clear()
    stack.script("gpt-4o", [{"kind": "error", "status": 503, "type": "server_error", "message": "overloaded"}])
    c = client(stack, stack.key_set(["gpt-4o-mini"]))
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    res = raw.parse()
    assert res.model == "gpt-4o-mini"
    assert raw.headers["x-reliablegpt-model"] == "gpt-4o-mini"
    assert raw.headers["x-reliablegpt-fallback-reason"] == "transient"
    assert res.choices[0].message.content == FULL_ANSWER


def test_a_stream_cut_midway_is_continued(stack):
    stack.clear()
    stack.script("gpt-4o", [{"kind": "stream_cut", "after_tokens": 6}])
    c = client(stack, stack.key_set(["gpt-4o-mini"]))
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True) if ch.choices)
    assert text == FULL_ANSWER


def test_embeddings_with_the_sdk_default_base64_encoding(stack):
    stack.clear()
    c = client(stack, stack.key_set([]))
    res = c.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert len(res.data) == 2
    assert len(res.data[0].embedding) == 1536


def test_bad_token_is_an_authentication_error(stack):
    c = client(stack, "rgpt_not_a_real_token")
    with pytest.raises(openai.AuthenticationError) as err:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.code == "invalid_api_key"


def test_content_filter_is_a_bad_request_error_with_the_upstream_reason(stack):
    stack.clear()
    stack.script("gpt-4o", [{"kind": "error", "status": 400, "code": "content_filter", "type": "invalid_request_error",
                             "message": "The response was filtered due to the prompt triggering the content policy."}])
    c = client(stack, stack.key_set(["gpt-4o-mini"]))
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.code == "content_filter"
    assert "filtered" in err.value.message
