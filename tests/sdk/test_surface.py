"""Moderations, image generation, text to speech and transcription through the gateway with the real `openai` SDK
(`moderations.create`, `images.generate`, `audio.speech.create`, `audio.transcriptions.create`); the same calls
straight against the mock prove it speaks these APIs as the SDK expects; and a fallback to a same-kind model is
invisible to the SDK."""

import openai
import pytest


def client(base_url, token):
    return openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)


@pytest.fixture(params=["gateway", "mock"])
def target(request, stack):
    """Every test of this kind runs through the gateway and straight against the mock."""
    stack.clear()
    if request.param == "gateway":
        return client(f"{stack.gateway}/v1", stack.key_set([]))
    return client(f"{stack.mock}/v1", "sk-mock-direct-000000000000000000000001")


def test_moderations_create(target):
    res = target.moderations.create(model="omni-moderation-latest", input=["I like tea.", "Plan an attack."])
    assert res.model == "omni-moderation-latest"
    assert [r.flagged for r in res.results] == [False, True]
    assert res.results[1].categories.violence is True
    assert res.results[0].categories.hate is False
    assert 0.0 <= res.results[0].category_scores.harassment < 0.01


def test_images_generate_url_and_b64(target):
    res = target.images.generate(model="dall-e-3", prompt="A lighthouse at dusk", size="1024x1024")
    assert len(res.data) == 1
    assert res.data[0].url.startswith("https://images.mock.invalid/dall-e-3/")
    assert res.data[0].revised_prompt
    res = target.images.generate(model="dall-e-2", prompt="A lighthouse", n=2, response_format="b64_json")
    assert len(res.data) == 2 and all(d.b64_json for d in res.data)
    res = target.images.generate(model="gpt-image-1", prompt="A lighthouse")
    assert res.data[0].b64_json and res.usage.input_tokens > 0


def test_audio_speech_create_returns_the_audio_bytes(target):
    res = target.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.")
    audio = res.read()
    assert res.response.headers["content-type"] == "audio/mpeg"
    assert len(audio) == 24 * 1024
    assert audio.startswith(b"ID3")
    with target.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input="Hello there.", response_format="wav"
    ) as streamed:
        assert streamed.headers["content-type"] == "audio/wav"
        pieces = list(streamed.iter_bytes(4096))
    assert sum(len(p) for p in pieces) == 24 * 1024


def test_same_kind_fallbacks_are_invisible_to_the_sdk(stack):
    stack.clear()
    gw = client(f"{stack.gateway}/v1", stack.key_set(["gpt-4o-mini", "text-moderation-latest", "dall-e-2", "tts-1-hd"]))
    stack.script("omni-moderation-latest", [{"kind": "error", "status": 500}])
    stack.script("dall-e-3", [{"kind": "error", "status": 503}])
    stack.script("tts-1", [{"kind": "reset_before_headers"}])
    raw = gw.moderations.with_raw_response.create(model="omni-moderation-latest", input="hello")
    assert raw.headers["x-reliablegpt-model"] == "text-moderation-latest"
    assert raw.parse().model == "text-moderation-latest"
    raw = gw.images.with_raw_response.generate(model="dall-e-3", prompt="A lighthouse")
    assert raw.headers["x-reliablegpt-model"] == "dall-e-2"
    assert raw.parse().data[0].url
    speech = gw.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="Hello there.")
    assert speech.headers["x-reliablegpt-model"] == "tts-1-hd"
    assert len(speech.content) == 24 * 1024


def test_bad_input_is_an_sdk_bad_request_error(stack):
    stack.clear()
    gw = client(f"{stack.gateway}/v1", stack.key_set([]))
    with pytest.raises(openai.BadRequestError) as err:
        gw.audio.speech.create(model="tts-1", voice="alloy", input="")
    assert err.value.body["param"] == "input"


def test_audio_transcriptions_create(target):
    audio = b"ID3\x04\x00" + bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    res = target.audio.transcriptions.create(model="whisper-1", file=("talk.mp3", audio, "audio/mpeg"), language="en")
    assert res.text.startswith(f"Transcript of talk.mp3 ({len(audio)} bytes, fnv64 ")
    assert res.text.endswith("by whisper-1.")
    text = target.audio.transcriptions.create(model="whisper-1", file=("talk.mp3", audio), response_format="text")
    assert "by whisper-1." in text


def test_a_transcription_falls_back_with_only_the_model_changed(stack):
    stack.clear()
    gw = client(f"{stack.gateway}/v1", stack.key_set(["tts-1", "gpt-4o-transcribe"]))
    stack.script("whisper-1", [{"kind": "error", "status": 502}])
    audio = bytes(range(256)) * 100
    raw = gw.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("a.wav", audio, "audio/wav"))
    assert raw.headers["x-reliablegpt-model"] == "gpt-4o-transcribe"
    assert raw.parse().text.endswith(f"({len(audio)} bytes, fnv64 {fnv64(audio)}) by gpt-4o-transcribe.")


def fnv64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"
