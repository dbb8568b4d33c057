"""rlhf.storage against the local disk and a real Cloud Storage emulator (see conftest.py), with
faults injected by a proxy in between (gcs_faults.py)."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc

import pytest

from gcs_faults import DOWNLOAD, LIST, METADATA, UPLOAD, FaultProxy
from rlhf import storage
from rlhf.errors import StorageError, StorageUnavailable, UserError

TREE = ["a/1.jsonl", "a/2.jsonl", "a/x.txt", "a/sub/3.jsonl", "a/sub/deep/4.jsonl", "b/5.jsonl"]


def _blob(gcs_emulator, uri):
    """The emulator's object for a gs:// URI, seen directly (not through rlhf.storage)."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    return gcs_emulator.client().bucket(bucket).blob(name)


def _lines(n, width=100):
    """n JSONL lines of random hex text (it does not compress to nothing under gzip)."""
    rng = random.Random(n)
    return [json.dumps({"i": i, "text": rng.randbytes(width // 2).hex()}) + "\n" for i in range(n)]


@pytest.fixture
def fast_retries(storage_settings):
    storage_settings(retry_initial=0.01, retry_maximum=0.05, retry_deadline=1.0, timeout=0.5)


@pytest.fixture
def proxy(gcs_emulator, monkeypatch):
    """All rlhf.storage traffic goes through a FaultProxy for this test."""
    with FaultProxy(gcs_emulator.host) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.host)
        yield p


@pytest.fixture
def no_temp_leftovers(tmp_path, monkeypatch):
    """Point the process temp dir at an empty folder; yield a check that it is still empty."""
    tmp = tmp_path / "process-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield lambda: sorted(os.listdir(tmp))


# ------------------------------------------------------------------------------------------
# Local files

def test_local_text_and_binary_roundtrip(tmp_path):
    path = str(tmp_path / "new" / "dir" / "data.jsonl")  # parents are created
    storage.write_text(path, '{"a": "é"}\n{"b": 2}\n')
    assert storage.read_text(path) == '{"a": "é"}\n{"b": 2}\n'
    with storage.open_read(path) as f:  # binary by default: raw bytes lines
        assert list(f) == ['{"a": "é"}\n'.encode(), b'{"b": 2}\n']
    with storage.open_read(path, "rt") as f:
        assert [line for line in f] == ['{"a": "é"}\n', '{"b": 2}\n']
    assert storage.exists(path) and storage.exists(str(tmp_path / "new"))
    assert not storage.exists(str(tmp_path / "missing.jsonl"))
    storage.write_json(str(tmp_path / "o.json"), {"b": [1, 2], "a": None})
    assert storage.read_json(str(tmp_path / "o.json")) == {"a": None, "b": [1, 2]}


def test_written_files_get_normal_permissions(tmp_path, gcs_prefix):
    (tmp_path / "plain.txt").write_text("x")  # what open() and mkdir() give
    (tmp_path / "plain-dir").mkdir()
    storage.write_text(str(tmp_path / "ours.txt"), "x")
    storage.write_text(f"{gcs_prefix}/m/f.txt", "x")
    storage.download_dir(f"{gcs_prefix}/m", str(tmp_path / "dl"))
    mode = (tmp_path / "plain.txt").stat().st_mode
    assert (tmp_path / "ours.txt").stat().st_mode == mode
    assert (tmp_path / "dl" / "f.txt").stat().st_mode == mode
    assert (tmp_path / "dl").stat().st_mode == (tmp_path / "plain-dir").stat().st_mode


def test_local_binary_mode_returns_invalid_utf8_untouched(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff\xfe"}\n')
    with storage.open_read(str(path), "rb") as f:
        assert list(f) == [b'{"a": 1}\n', b'{"b": "\xff\xfe"}\n']
    with pytest.raises(StorageError, match="not valid UTF-8"):
        storage.read_text(str(path))


@pytest.mark.parametrize("pattern, expected", [
    ("a/*.jsonl", ["a/1.jsonl", "a/2.jsonl"]),
    ("a/?.jsonl", ["a/1.jsonl", "a/2.jsonl"]),
    ("a/[2x].*", ["a/2.jsonl", "a/x.txt"]),
    ("*/*.jsonl", ["a/1.jsonl", "a/2.jsonl", "b/5.jsonl"]),
    ("a/**/*.jsonl", ["a/1.jsonl", "a/2.jsonl", "a/sub/3.jsonl", "a/sub/deep/4.jsonl"]),
    ("a/sub/3.jsonl", ["a/sub/3.jsonl"]),
])
def test_globs_local_and_gcs_agree(tmp_path, gcs_prefix, pattern, expected):
    for name in TREE:
        storage.write_text(str(tmp_path / name), name)
        storage.write_text(f"{gcs_prefix}/{name}", name)
    local = storage.expand(f"{tmp_path}/{pattern}")
    remote = storage.expand(f"{gcs_prefix}/{pattern}")
    assert local == [f"{tmp_path}/{name}" for name in expected]
    assert remote == [f"{gcs_prefix}/{name}" for name in expected]
    assert [storage.read_text(uri) for uri in remote] == expected


def test_glob_matching_nothing(tmp_path, gcs_prefix):
    storage.write_text(f"{gcs_prefix}/a/1.jsonl", "x")
    with pytest.raises(StorageError, match=r"a/\*\.json: the pattern matches no file"):
        storage.expand(f"{tmp_path}/a/*.json")
    with pytest.raises(StorageError, match=r"a/\*\.json: the pattern matches no object"):
        storage.expand(f"{gcs_prefix}/a/*.json")
    assert not storage.exists(f"{gcs_prefix}/a/*.json")
    assert storage.exists(f"{gcs_prefix}/a/*.jsonl")


def test_local_gzip_read_and_write(tmp_path):
    made_by_gzip = tmp_path / "in.jsonl.gz"
    made_by_gzip.write_bytes(gzip.compress("".join(_lines(500)).encode()))
    with storage.open_read(str(made_by_gzip), "rt") as f:
        assert list(f) == _lines(500)
    ours = str(tmp_path / "out.jsonl.gz")
    storage.write_text(ours, "héllo\n")
    assert gzip.decompress((tmp_path / "out.jsonl.gz").read_bytes()) == "héllo\n".encode()
    assert storage.read_text(ours) == "héllo\n"


def test_bad_gzip(tmp_path, gcs_emulator, gcs_prefix):
    (tmp_path / "x.jsonl.gz").write_bytes(b'{"plain": "text"}\n')
    with pytest.raises(StorageError, match=r"x\.jsonl\.gz: not a valid gzip file"):
        storage.read_text(str(tmp_path / "x.jsonl.gz"))
    truncated = gzip.compress(b"data\n" * 1000)[:-20]
    _blob(gcs_emulator, f"{gcs_prefix}/y.jsonl.gz").upload_from_string(truncated)
    with pytest.raises(StorageError, match=r"y\.jsonl\.gz: not a valid gzip file"):
        storage.read_text(f"{gcs_prefix}/y.jsonl.gz")


def test_local_missing_file(tmp_path):
    with pytest.raises(StorageError, match=r"nope\.jsonl: no such file or directory"):
        storage.open_read(str(tmp_path / "nope.jsonl"))
    with pytest.raises(StorageError, match="relative to"):
        storage.expand("no/such/relative.jsonl")
    with pytest.raises(StorageError, match="is a directory"):
        storage.read_text(str(tmp_path))
    assert issubclass(StorageError, UserError)


def test_local_atomic_write(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with storage.open_write(str(target), "wt") as f:
            f.write("first half\n")
            raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []  # no target, no temp file

    storage.write_text(str(target), "old\n")
    with pytest.raises(RuntimeError):
        with storage.open_write(str(target), "wt") as f:
            f.write("new\n" * 100_000)
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="unsupported scheme"):
        storage.open_read("s3://bucket/x.jsonl")
    with pytest.raises(StorageError, match="no bucket name"):
        storage.open_read("gs:///x.jsonl")


def test_join():
    assert storage.join("gs://b", "dir/", "/x.jsonl") == "gs://b/dir/x.jsonl"
    assert storage.join("gs://b/", "x") == "gs://b/x"
    assert storage.join("/tmp/a/", "b", "", "c") == "/tmp/a/b/c"


# ------------------------------------------------------------------------------------------
# Cloud Storage through the emulator

def test_gcs_roundtrip(gcs_emulator, gcs_prefix):
    uri = f"{gcs_prefix}/data.jsonl"
    storage.write_text(uri, "é\n")
    assert _blob(gcs_emulator, uri).download_as_bytes() == "é\n".encode()
    assert storage.read_text(uri) == "é\n"
    storage.write_json(f"{gcs_prefix}/m.json", {"k": [1]})
    assert storage.read_json(f"{gcs_prefix}/m.json") == {"k": [1]}
    with storage.open_write(f"{gcs_prefix}/raw.bin", "wb") as f:
        f.write(b"\x00\xff\n\x01")
    with storage.open_read(f"{gcs_prefix}/raw.bin") as f:
        assert f.read() == b"\x00\xff\n\x01"
    assert storage.is_gcs(uri) and not storage.is_gcs("/tmp/x")


def test_gcs_gzip(gcs_emulator, gcs_prefix):
    uri = f"{gcs_prefix}/in.jsonl.gz"
    _blob(gcs_emulator, uri).upload_from_string(gzip.compress("".join(_lines(300)).encode()))
    with storage.open_read(uri, "rt") as f:
        assert list(f) == _lines(300)
    storage.write_text(f"{gcs_prefix}/out.jsonl.gz", "abc\n")
    stored = _blob(gcs_emulator, f"{gcs_prefix}/out.jsonl.gz").download_as_bytes()
    assert gzip.decompress(stored) == b"abc\n"


def test_gcs_invalid_json_and_utf8(gcs_emulator, gcs_prefix):
    _blob(gcs_emulator, f"{gcs_prefix}/bad.json").upload_from_string(b'{\n  "a": 1,\n}\n')
    with pytest.raises(StorageError, match=r"bad\.json:3: invalid JSON"):
        storage.read_json(f"{gcs_prefix}/bad.json")
    _blob(gcs_emulator, f"{gcs_prefix}/bad.txt").upload_from_string(b"ok\n\xc3(\n")
    with pytest.raises(StorageError, match="not valid UTF-8"):
        storage.read_text(f"{gcs_prefix}/bad.txt")
    with storage.open_read(f"{gcs_prefix}/bad.txt", "rb") as f:
        assert list(f) == [b"ok\n", b"\xc3(\n"]


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.gz"])
def test_gcs_reads_stream_in_chunks(gcs_emulator, gcs_prefix, proxy, storage_settings, name):
    chunk = 64 << 10
    storage_settings(chunk_size=chunk)
    lines = _lines(20_000)  # ~2.3 MB of text
    payload = "".join(lines).encode()
    if name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1)
    uri = f"{gcs_prefix}/{name}"
    _blob(gcs_emulator, uri).upload_from_string(payload)
    assert len(payload) > 8 * chunk
    with storage.open_read(uri, "rt") as f:
        assert next(f) == lines[0]
        sent = sum(r.body_bytes for r in proxy.requests("GET", DOWNLOAD))
        assert 0 < sent <= 2 * chunk  # the first line cost one chunk, not the whole object
        assert [next(f) for _ in range(9)] == lines[1:10]
        rest = list(f)
    assert len(rest) + 10 == len(lines) and rest[-1] == lines[-1]
    downloads = proxy.requests("GET", DOWNLOAD)
    assert len(downloads) >= len(payload) // chunk
    assert max(r.body_bytes for r in downloads) <= chunk + 1  # HTTP ranges include the end


def test_gcs_read_memory_stays_bounded(gcs_emulator, gcs_prefix, storage_settings):
    storage_settings(chunk_size=256 << 10)
    lines = _lines(6_000, width=1000)  # ~6 MB
    uri = f"{gcs_prefix}/big.jsonl"
    _blob(gcs_emulator, uri).upload_from_string("".join(lines).encode())
    count = 0
    tracemalloc.start()
    try:
        with storage.open_read(uri, "rb") as f:
            for line in f:
                count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == len(lines)
    assert peak < 2 << 20, f"peak {peak} bytes while streaming a 6 MB object"


def test_gcs_atomic_write_on_exception(gcs_emulator, gcs_prefix, no_temp_leftovers):
    uri = f"{gcs_prefix}/out.jsonl"
    with pytest.raises(RuntimeError):
        with storage.open_write(uri, "wt") as f:
            f.write("x" * 100_000)
            raise RuntimeError("killed mid-write")
    assert not _blob(gcs_emulator, uri).exists()
    storage.write_text(uri, "old\n")
    with pytest.raises(RuntimeError):
        with storage.open_write(uri, "wt") as f:
            f.write("new\n")
            raise RuntimeError("killed mid-write")
    assert _blob(gcs_emulator, uri).download_as_bytes() == b"old\n"
    assert no_temp_leftovers() == []


def test_gcs_missing_object(gcs_prefix):
    storage.write_text(f"{gcs_prefix}/data/train.jsonl", "x\n")
    storage.write_text(f"{gcs_prefix}/data/sub/y.jsonl", "x\n")
    with pytest.raises(StorageError) as err:
        storage.open_read(f"{gcs_prefix}/data/trian.jsonl")
    assert str(err.value) == (f"{gcs_prefix}/data/trian.jsonl: no such object; "
                              f"{gcs_prefix}/data/ holds: sub/, train.jsonl")
    with pytest.raises(StorageError, match=r"no such object; nothing exists under"):
        storage.read_text(f"{gcs_prefix}/nothing/here.jsonl")
    with pytest.raises(StorageError, match=r"/data: is a directory"):
        storage.read_text(f"{gcs_prefix}/data")
    with pytest.raises(StorageError, match="no such object"):
        storage.expand(f"{gcs_prefix}/data/trian.jsonl")


def test_gcs_missing_bucket(tmp_path, gcs_emulator):
    message = r"bucket no-such-bucket-x does not exist or you have no access to it"
    with pytest.raises(StorageError, match=message):
        storage.open_read("gs://no-such-bucket-x/data/train.jsonl")
    with pytest.raises(StorageError, match=message):
        storage.expand("gs://no-such-bucket-x/data/*.jsonl")
    with pytest.raises(StorageError, match=message):
        storage.download_dir("gs://no-such-bucket-x/model", str(tmp_path / "m"))
    assert not storage.exists("gs://no-such-bucket-x/data/train.jsonl")
    assert not os.path.exists(tmp_path / "m")


def test_gcs_exists(gcs_emulator, gcs_prefix):
    storage.write_text(f"{gcs_prefix}/dir/x.jsonl", "x")
    assert storage.exists(f"{gcs_prefix}/dir/x.jsonl")
    assert storage.exists(f"{gcs_prefix}/dir")  # a "directory": a prefix of objects
    assert storage.exists(f"{gcs_prefix}/dir/")
    assert not storage.exists(f"{gcs_prefix}/dir/y.jsonl")
    assert not storage.exists(f"{gcs_prefix}/di")  # a prefix of a name is not a directory
    assert storage.exists(gcs_emulator.uri())  # the bucket itself


def test_gcs_fuse_paths(gcs_emulator, gcs_prefix, tmp_path, storage_settings):
    name = gcs_prefix[len(f"gs://{gcs_emulator.bucket}/"):]
    storage.write_text(f"{gcs_prefix}/d/x.jsonl", "remote\n")
    # No mount here: /gcs/BUCKET/... is read through the API (what kfp's local runner needs).
    assert not os.path.exists(f"/gcs/{gcs_emulator.bucket}")
    fuse = f"/gcs/{gcs_emulator.bucket}/{name}"
    assert storage.is_gcs(f"{fuse}/d/x.jsonl")
    assert storage.read_text(f"{fuse}/d/x.jsonl") == "remote\n"
    assert storage.expand(f"{fuse}/d/*.jsonl") == [f"{fuse}/d/x.jsonl"]
    storage.write_text(f"{fuse}/d/y.jsonl", "written\n")
    assert storage.read_text(f"{gcs_prefix}/d/y.jsonl") == "written\n"
    with pytest.raises(StorageError, match="no Cloud Storage FUSE mount exists at /gcs/nob"):
        storage.read_text("/gcs/nob/x.jsonl")

    # A mounted bucket (as on Vertex) is used as local files.
    root = tmp_path / "gcs"
    (root / gcs_emulator.bucket / "d").mkdir(parents=True)
    (root / gcs_emulator.bucket / "d" / "x.jsonl").write_text("mounted\n")
    storage_settings(fuse_root=str(root))
    mounted = f"{root}/{gcs_emulator.bucket}/d/x.jsonl"
    assert not storage.is_gcs(mounted)
    assert storage.read_text(mounted) == "mounted\n"
    assert storage.expand(f"{root}/{gcs_emulator.bucket}/d/*.jsonl") == [mounted]
    storage.write_text(f"{root}/{gcs_emulator.bucket}/d/new.jsonl", "local\n")
    assert (root / gcs_emulator.bucket / "d" / "new.jsonl").read_text() == "local\n"
    assert not storage.exists(f"{gcs_prefix}/d/new.jsonl")


def test_dirs_roundtrip(gcs_emulator, gcs_prefix, tmp_path):
    src = tmp_path / "model"
    files = {"config.json": b'{"a": 1}', "weights.bin": os.urandom(300_000),
             "tokenizer/vocab.txt": b"a\nb\n", "tokenizer/sub/empty": b""}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    storage.upload_dir(str(src), f"{gcs_prefix}/model")
    storage.write_text(f"{gcs_prefix}/model-v2/other.json", "{}")  # same prefix, other dir
    assert _blob(gcs_emulator, f"{gcs_prefix}/model/tokenizer/vocab.txt").download_as_bytes() \
        == b"a\nb\n"

    out = tmp_path / "downloaded"
    assert storage.download_dir(f"{gcs_prefix}/model", str(out)) == str(out)
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files
    assert sorted(os.listdir(tmp_path)) == ["downloaded", "model"]  # no temp dir left

    # Into an existing directory: files are added, others kept.
    (out / "keep.txt").write_text("mine")
    storage.download_dir(f"{gcs_prefix}/model/", str(out))
    assert (out / "keep.txt").read_text() == "mine" and (out / "weights.bin").read_bytes() \
        == files["weights.bin"]

    local_copy = tmp_path / "copy"  # local -> local works the same way
    storage.upload_dir(str(src), str(local_copy))
    assert storage.download_dir(str(local_copy), str(tmp_path / "copy2")) == str(tmp_path / "copy2")
    assert (tmp_path / "copy2" / "tokenizer" / "vocab.txt").read_bytes() == b"a\nb\n"

    with pytest.raises(StorageError, match="no objects under"):
        storage.download_dir(f"{gcs_prefix}/nothing", str(tmp_path / "x"))
    with pytest.raises(StorageError, match="no such file or directory"):
        storage.upload_dir(str(tmp_path / "nope"), f"{gcs_prefix}/m")


# ------------------------------------------------------------------------------------------
# Faults: retries, exhausted retries, permissions

OPERATIONS = {
    "read": ("GET", DOWNLOAD, lambda p: storage.read_text(f"{p}/x.jsonl")),
    "metadata": ("GET", METADATA, lambda p: storage.read_text(f"{p}/x.jsonl")),
    "list": ("GET", LIST, lambda p: storage.expand(f"{p}/*.jsonl") and storage.read_text(
        f"{p}/x.jsonl")),
    "write": ("POST", UPLOAD, lambda p: storage.write_text(f"{p}/x.jsonl", "a\nb\n")
              or storage.read_text(f"{p}/x.jsonl")),
}


@pytest.mark.parametrize("status", [503, 429, 500, 0], ids=lambda s: f"status{s or '-reset'}")
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_transient_faults_are_retried(gcs_prefix, proxy, fast_retries, operation, status):
    storage.write_text(f"{gcs_prefix}/x.jsonl", "a\nb\n")
    method, path, call = OPERATIONS[operation]
    fault = proxy.fail(status, times=2, method=method, path=path)
    assert call(gcs_prefix) == "a\nb\n"
    assert fault.injected == 2


def test_timeouts_are_retried(gcs_prefix, proxy, fast_retries):
    storage.write_text(f"{gcs_prefix}/x.jsonl", "a\n")
    fault = proxy.fail(200, times=1, method="GET", path=DOWNLOAD, delay=1.0)  # timeout is 0.5 s
    start = time.monotonic()
    assert storage.read_text(f"{gcs_prefix}/x.jsonl") == "a\n"
    assert fault.injected == 1 and time.monotonic() - start < 1.0


def test_large_upload_chunk_faults_are_retried(gcs_emulator, gcs_prefix, proxy, fast_retries,
                                               storage_settings):
    storage_settings(timeout=10)  # a 9 MB chunk through two local hops
    data = os.urandom(9 << 20)  # above the one-request limit: a resumable upload
    fault = proxy.fail(503, times=2, method="PUT", path=UPLOAD)
    with storage.open_write(f"{gcs_prefix}/big.bin") as f:
        f.write(data)
    assert fault.injected == 2
    assert _blob(gcs_emulator, f"{gcs_prefix}/big.bin").download_as_bytes() == data


def test_download_dir_retries(gcs_prefix, proxy, fast_retries, tmp_path):
    for i in range(5):
        storage.write_text(f"{gcs_prefix}/m/f{i}.txt", str(i))
    fault = proxy.fail(503, times=4, method="GET", path=DOWNLOAD)
    storage.download_dir(f"{gcs_prefix}/m", str(tmp_path / "m"))
    assert fault.injected == 4
    assert sorted(p.read_text() for p in (tmp_path / "m").iterdir()) == list("01234")


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_persistent_faults_give_a_clear_error(gcs_emulator, gcs_prefix, proxy, fast_retries,
                                              no_temp_leftovers, operation):
    storage.write_text(f"{gcs_prefix}/x.jsonl", "old\n")
    method, path, call = OPERATIONS[operation]
    fault = proxy.fail(503, times=None, method=method, path=path,
                       message="We encountered an internal error. Please try again.")
    start = time.monotonic()
    with pytest.raises(StorageUnavailable) as err:  # an outage, not a mistake in the request
        call(gcs_prefix)
    elapsed = time.monotonic() - start
    assert f"{gcs_prefix}/" in str(err.value)
    assert str(err.value).startswith("Cloud Storage unavailable after 1 s of retries")
    assert "HTTP 503 We encountered an internal error" in str(err.value)
    assert fault.injected > 3  # it did back off and retry, within the deadline
    assert elapsed < 5
    assert _blob(gcs_emulator, f"{gcs_prefix}/x.jsonl").download_as_bytes() == b"old\n"
    assert no_temp_leftovers() == []


def test_persistent_faults_mid_stream(gcs_emulator, gcs_prefix, proxy, fast_retries,
                                      storage_settings):
    storage_settings(chunk_size=64 << 10)
    _blob(gcs_emulator, f"{gcs_prefix}/big.jsonl").upload_from_string("".join(_lines(5000)))
    with storage.open_read(f"{gcs_prefix}/big.jsonl") as f:
        next(f)
        proxy.fail(503, times=None, method="GET", path=DOWNLOAD)
        with pytest.raises(StorageUnavailable, match=r"of retries reading .*big\.jsonl"):
            list(f)


def test_permission_denied(gcs_prefix, proxy, fast_retries):
    storage.write_text(f"{gcs_prefix}/x.jsonl", "a\n")
    fault = proxy.fail(403, times=None, message=(
        "ci@p.iam.gserviceaccount.com does not have storage.objects.get access to the Google "
        "Cloud Storage object. Permission 'storage.objects.get' denied on resource"))
    with pytest.raises(StorageError) as err:
        storage.read_text(f"{gcs_prefix}/x.jsonl")
    message = str(err.value)
    assert message.startswith(f"{gcs_prefix}/x.jsonl: permission denied reading")
    assert "ci@p.iam.gserviceaccount.com does not have storage.objects.get" in message
    assert "gcloud auth application-default login" in message
    assert fault.injected == 1  # a 403 is not retried
    with pytest.raises(StorageError, match="permission denied writing"):
        storage.write_text(f"{gcs_prefix}/y.jsonl", "a\n")


def test_without_credentials_public_reads_work_and_writes_explain(gcs_emulator, gcs_prefix,
                                                                   tmp_path):
    storage.write_text(f"{gcs_prefix}/public.jsonl", "open data\n")
    # A fresh process with no credentials anywhere, talking to the emulator as if it were the
    # real endpoint (API_ENDPOINT_OVERRIDE, not STORAGE_EMULATOR_HOST, which implies no auth).
    env = {k: v for k, v in os.environ.items()
           if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(API_ENDPOINT_OVERRIDE=gcs_emulator.host, NO_GCE_CHECK="true",
               CLOUDSDK_CONFIG=str(tmp_path), HOME=str(tmp_path))
    script = textwrap.dedent(f"""
        from rlhf import storage
        from rlhf.errors import StorageError
        print(storage.read_text("{gcs_prefix}/public.jsonl"), end="")
        try:
            storage.write_text("{gcs_prefix}/new.jsonl", "x")
        except StorageError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "open data"
    assert second.startswith(f"{gcs_prefix}/new.jsonl: writing to Cloud Storage needs "
                             "credentials and none were found")
    assert "gcloud auth application-default login" in second
    assert not _blob(gcs_emulator, f"{gcs_prefix}/new.jsonl").exists()
