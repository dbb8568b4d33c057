"""Shared test fixtures.

`gcs_emulator` (session): a real Cloud Storage server, `gcp-storage-emulator`, run as a subprocess
on a free 127.0.0.1 port with an in-memory backend and one bucket. While it runs,
`STORAGE_EMULATOR_HOST` points at it, so `rlhf.storage` and any `google.cloud.storage.Client()`
(also in subprocesses, e.g. kfp's local runner) talk to it without credentials. It yields a
`GcsEmulator` with:
    .host      "http://127.0.0.1:PORT" (the STORAGE_EMULATOR_HOST value)
    .bucket    the bucket name
    .uri(*parts) -> "gs://BUCKET/part/part"
    .client()  a google.cloud.storage.Client, to set up or inspect objects without rlhf.storage
The bucket is shared by the whole session: put each test's objects under its own prefix, e.g.
with the `gcs_prefix` fixture ("gs://BUCKET/<test name>-<random>").
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

import pytest


@dataclass
class GcsEmulator:
    host: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *(p.strip("/") for p in parts)])

    def client(self):
        from google.cloud import storage

        # The emulator endpoint, whatever STORAGE_EMULATOR_HOST says now (a test may point it
        # at a fault proxy): set-up and checks must not go through the faults.
        return storage.Client(client_options={"api_endpoint": self.host},
                              credentials=_anonymous(), project="test")


def _anonymous():
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_emulator(bucket: str, log_path: str):
    """Start the emulator; return (process, host) once it answers, or raise with its log."""
    for _ in range(3):  # the port is free when chosen but another process may take it first
        port = _free_port()
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
             "--port", str(port), "--in-memory", "--default-bucket", bucket, "--quiet"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        host = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}", timeout=1) as r:
                    if r.status == 200:
                        return proc, host
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    with open(log_path, errors="replace") as f:
        raise RuntimeError(f"gcp-storage-emulator did not start; its log:\n{f.read()[-3000:]}")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    bucket = "rlhf-test-bucket"
    log_path = str(tmp_path_factory.mktemp("gcs-emulator") / "emulator.log")
    proc, host = _start_emulator(bucket, log_path)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", host)
            yield GcsEmulator(host=host, bucket=bucket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def gcs_prefix(gcs_emulator, request) -> str:
    """A fresh gs:// prefix for one test, in the emulator's bucket (no trailing slash)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return gcs_emulator.uri(f"{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def storage_settings():
    """`storage_settings(retry_deadline=1, ...)` changes rlhf.storage settings for one test."""
    from rlhf import storage

    previous: dict = {}

    def apply(**settings):
        for name, value in storage.configure(**settings).items():
            previous.setdefault(name, value)

    yield apply
    storage.configure(**previous)


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread, above all on a busy machine (OpenMP threads of a
    2-core box otherwise spin against other processes: seen 12 ms per 64-wide matmul)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def word_tokenizer(tmp_path) -> str:
    """A real (tiny) tokenizer directory, one token per whitespace-separated word, so token counts
    in a test are plain word counts (shared by the library and CLI tests of `rlhf validate`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path / "tok"
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[EOS]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(directory)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    return str(directory)
