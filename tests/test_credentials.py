"""A hub token reaches the model download from the environment or Secret Manager, and nowhere else.

Secret Manager and the Hugging Face hub are played by one local HTTP stand-in that records every
request; the real code (our REST call through requests, huggingface_hub's own client) talks to it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlhf import credentials
from rlhf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_StandInSeCrEt0123456789"
SECRET = "projects/p1/secrets/hf-token/versions/latest"


class StandIn:
    """Secret Manager's `versions/*:access` and a hub that knows no models; records requests."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.secrets = {SECRET: TOKEN}
        self.fail_first: list[int] = []  # statuses to answer before the real answer
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                stand_in.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if stand_in.fail_first:
                    return self._send(stand_in.fail_first.pop(0), {"error": {"message": "try again"}})
                if self.path.startswith("/v1/") and self.path.endswith(":access"):
                    name = self.path[len("/v1/"):-len(":access")]
                    if name == "projects/p1/secrets/locked/versions/1":
                        return self._send(403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}})
                    if name not in stand_in.secrets:
                        return self._send(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
                    data = base64.b64encode(stand_in.secrets[name].encode()).decode()
                    return self._send(200, {"name": name, "payload": {"data": data}})
                return self._send(404, {"error": "Repository not found"})  # the hub: no such model

            def _send(self, status, body):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            do_GET = do_HEAD = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def stand_in(monkeypatch):
    server = StandIn()
    for name in credentials.HUB_TOKEN_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(credentials.ENDPOINT_ENV, server.url)
    yield server
    server.close()


def test_no_token_configured_means_none_and_no_request(stand_in, monkeypatch):
    monkeypatch.delenv(credentials.HUB_TOKEN_SECRET_ENV, raising=False)
    assert credentials.hub_token() is None
    assert stand_in.requests == []


def test_token_is_read_from_the_named_secret_version(stand_in, monkeypatch):
    monkeypatch.setenv(credentials.HUB_TOKEN_SECRET_ENV, SECRET)
    assert credentials.hub_token() == TOKEN
    assert [path for path, _ in stand_in.requests] == [f"/v1/{SECRET}:access"]


def test_environment_token_wins_and_secret_manager_is_not_asked(stand_in, monkeypatch):
    monkeypatch.setenv(credentials.HUB_TOKEN_SECRET_ENV, SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_FromTheShell")
    assert credentials.hub_token() == "hf_FromTheShell"
    assert stand_in.requests == []


def test_transient_errors_are_retried(stand_in, monkeypatch):
    monkeypatch.setattr(credentials.time, "sleep", lambda s: None)
    stand_in.fail_first = [503, 429]
    assert credentials.access_secret(SECRET) == TOKEN
    assert len(stand_in.requests) == 3


@pytest.mark.parametrize("name, message", [
    ("projects/p1/secrets/locked/versions/1", "roles/secretmanager.secretAccessor"),
    ("projects/p1/secrets/missing/versions/3", "no secret version projects/p1/secrets/missing/versions/3"),
    ("hf_PastedTokenNotAName", "projects/PROJECT/secrets/NAME/versions/VERSION"),
])
def test_secret_errors_say_what_to_fix_and_never_echo_a_token(stand_in, name, message):
    with pytest.raises(UserError) as e:
        credentials.access_secret(name, purpose=credentials.HUB_TOKEN_SECRET_ENV)
    assert message in str(e.value)
    assert "hf_PastedTokenNotAName" not in str(e.value) and TOKEN not in str(e.value)


def test_hub_download_carries_the_secret_token_and_the_output_never_shows_it(stand_in, tmp_path):
    # A fresh process: huggingface_hub reads HF_ENDPOINT when it is imported.
    env = {k: v for k, v in os.environ.items()
           if k not in credentials.HUB_TOKEN_ENVS and k != "HF_HUB_OFFLINE"}
    env.update({credentials.HUB_TOKEN_SECRET_ENV: SECRET, credentials.ENDPOINT_ENV: stand_in.url,
                "HF_ENDPOINT": stand_in.url, "HF_HOME": str(tmp_path / "hf"), "RLHF_CACHE": str(tmp_path / "c"),
                "HF_HUB_DISABLE_TELEMETRY": "1"})
    done = subprocess.run([sys.executable, "-m", "rlhf", "validate", "--preference-dataset",
                           str(ROOT / "rlhf/sample_data/preference.jsonl"), "--tokenizer", "rlhf-tests/gated-model"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "rlhf-tests/gated-model" in done.stderr and "could not be fetched" in done.stderr
    hub_calls = [(path, headers) for path, headers in stand_in.requests if "gated-model" in path]
    assert hub_calls, stand_in.requests
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for _, headers in hub_calls)
    assert TOKEN not in done.stdout + done.stderr
