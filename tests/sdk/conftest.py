"""Starts the real reliablegpt binary and its fault-injecting mock upstream for the SDK tests.

Needs DATABASE_URL (a PostgreSQL with pgvector; scripts/test provides one) and RELIABLEGPT_BIN (the built binary).
"""

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as res:
                if res.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def http_json(method: str, url: str, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as res:
        text = res.read()
        return json.loads(text) if text else None


class Stack:
    def __init__(self, gateway: str, mock: str):
        self.gateway = gateway
        self.mock = mock

    def script(self, target: str, steps: list) -> None:
        http_json("POST", f"{self.mock}/_mock/script", {"target": target, "steps": steps})

    def clear(self) -> None:
        http_json("POST", f"{self.mock}/_mock/clear", {})

    def key_set(self, fallbacks: list) -> str:
        created = http_json(
            "POST",
            f"{self.gateway}/v1/keys",
            {"user_email": "sdk@example.com", "keys": ["sk-sdk-test-key-00000000000000000000001"],
             "policy": {"fallback_strategy": fallbacks}},
        )
        return created["token"]


class Mock:
    """The mock upstream alone, at `url` (its root: the Anthropic and Gemini base URL)."""

    def __init__(self, url: str):
        self.url = url

    def script(self, target: str, steps: list) -> None:
        http_json("POST", f"{self.url}/_mock/script", {"target": target, "steps": steps})

    def invalid_key(self, key: str) -> None:
        http_json("POST", f"{self.url}/_mock/invalid_key", {"key": key})

    def no_quota_key(self, key: str) -> None:
        http_json("POST", f"{self.url}/_mock/no_quota_key", {"key": key})

    def rejects_prefill(self, target: str) -> None:
        http_json("POST", f"{self.url}/_mock/rejects_prefill", {"target": target})

    def requests(self) -> list:
        return http_json("GET", f"{self.url}/_mock/requests")

    def clear(self) -> None:
        http_json("POST", f"{self.url}/_mock/clear", {})


@pytest.fixture(scope="session")
def mock():
    """The mock upstream alone (no gateway, no database), for tests that drive it directly with a provider's SDK."""
    binary = os.environ["RELIABLEGPT_BIN"]
    port = _free_port()
    proc = subprocess.Popen([binary, "mock-upstream", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/_mock/health", proc)
        yield Mock(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def stack():
    binary = os.environ["RELIABLEGPT_BIN"]
    mock_port, gw_port = _free_port(), _free_port()
    mock = subprocess.Popen([binary, "mock-upstream", "--listen", f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "RELIABLEGPT_LISTEN": f"127.0.0.1:{gw_port}",
        "RELIABLEGPT_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "RELIABLEGPT_TOKEN_PEPPER": base64.b64encode(os.urandom(32)).decode(),
        "RELIABLEGPT_OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "RELIABLEGPT_ALLOW_PRIVATE_UPSTREAMS": "true",
        "RELIABLEGPT_ALLOWED_UPSTREAM_HOSTS": "127.0.0.1",
        "RELIABLEGPT_RETRY_BASE_MS": "5",
        # Every test module creates its own key sets from this one address.
        "RELIABLEGPT_KEY_SETS_PER_MINUTE": "10000",
        "RUST_LOG": "warn",
    }
    gateway = subprocess.Popen([binary, "serve", "--migrate"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(f"http://127.0.0.1:{mock_port}/_mock/health", mock)
        _wait_for(f"http://127.0.0.1:{gw_port}/readyz", gateway)
        yield Stack(f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{mock_port}")
    finally:
        for proc in (gateway, mock):
            proc.terminate()
            proc.wait(timeout=10)
