"""The Responses API through the gateway with the real `openai` SDK (`responses.create`, plain and streamed) and
LangChain's `ChatOpenAI(use_responses_api=True)`; and the same SDK straight against the mock, to prove the mock speaks
the API as the SDK expects."""

import openai
import pytest
from langchain_openai import ChatOpenAI

FULL_ANSWER = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray."
)
FIRST_SIX = "alpha bravo charlie delta echo foxtrot"


def client(base_url, token):
    return openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)


def gateway(stack, fallbacks=()):
    return client(f"{stack.gateway}/v1", stack.key_set(list(fallbacks)))


def mock(stack, key="sk-mock-direct-000000000000000000000001"):
    return client(f"{stack.mock}/v1", key)


@pytest.fixture(params=["gateway", "mock"])
def target(request, stack):
    """Every test of this kind runs through the gateway and straight against the mock."""
    stack.clear()
    return gateway(stack) if request.param == "gateway" else mock(stack)


def test_create(target):
    res = target.responses.create(model="gpt-4o", input="Say the alphabet.", instructions="Be terse.")
    assert res.object == "response"
    assert res.status == "completed"
    assert res.output_text == FULL_ANSWER
    assert res.model == "gpt-4o"
    assert res.usage.output_tokens == 24
    assert res.usage.input_tokens > 0


def test_create_streamed(target):
    events = list(target.responses.create(model="gpt-4o", input="Say the alphabet.", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == FULL_ANSWER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == FULL_ANSWER
    assert events[-1].response.usage.output_tokens == 24


def test_stream_helper_gets_the_final_response(target):
    with target.responses.stream(model="gpt-4o", input=[{"role": "user", "content": "Say the alphabet."}]) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == FULL_ANSWER
    assert final.output_text == FULL_ANSWER


def test_stored_response_follow_up_retrieve_items_and_delete(target):
    first = target.responses.create(model="gpt-4o", input="Say the alphabet.")
    follow = target.responses.create(model="gpt-4o", input="Again.", previous_response_id=first.id)
    assert follow.output_text == FULL_ANSWER
    assert target.responses.retrieve(first.id).output_text == FULL_ANSWER
    items = target.responses.input_items.list(first.id)
    assert items.data[0].content[0].text == "Say the alphabet."
    with pytest.raises(openai.BadRequestError):
        target.responses.cancel(first.id)  # not a background response
    target.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        target.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        target.responses.create(model="gpt-4o", input="x", previous_response_id="resp_never_created")


def test_the_mock_keeps_responses_per_key(stack):
    stack.clear()
    first = mock(stack).responses.create(model="gpt-4o", input="Say the alphabet.")
    other = mock(stack, "sk-mock-direct-000000000000000000000002")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.create(model="gpt-4o", input="x", previous_response_id=first.id)
    assert err.value.code == "previous_response_not_found"


def test_a_cut_stream_ends_with_an_error_event_and_no_completed_event(stack):
    stack.clear()
    stack.script("gpt-4o", [{"kind": "stream_cut", "after_tokens": 6}])
    events = list(gateway(stack, ["gpt-4o-mini"]).responses.create(model="gpt-4o", input="Say the alphabet.",
                                                                   stream=True))
    assert "response.completed" not in [e.type for e in events]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == FIRST_SIX
    assert events[-1].type == "error"
    assert events[-1].code == "stream_interrupted"


def test_fallback_is_visible_in_the_model_and_headers(stack):
    stack.clear()
    stack.script("gpt-4o", [{"kind": "error", "status": 503, "type": "server_error", "message": "overloaded"}])
    raw = gateway(stack, ["gpt-4o-mini"]).responses.with_raw_response.create(model="gpt-4o", input="Hi")
    res = raw.parse()
    assert res.model == "gpt-4o-mini"
    assert raw.headers["x-reliablegpt-model"] == "gpt-4o-mini"
    assert raw.headers["x-reliablegpt-fallback-reason"] == "transient"
    assert res.output_text == FULL_ANSWER


def test_langchain_chat_openai_with_the_responses_api(stack):
    stack.clear()
    llm = ChatOpenAI(model="gpt-4o", base_url=f"{stack.gateway}/v1", api_key=stack.key_set([]),
                     use_responses_api=True, max_retries=0)
    message = llm.invoke("Say the alphabet.")
    assert message.text == FULL_ANSWER
    assert message.usage_metadata["output_tokens"] == 24
    assert "".join(chunk.text for chunk in llm.stream("Say the alphabet.")) == FULL_ANSWER
