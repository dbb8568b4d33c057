"""One way to read and write data wherever it lives: local paths, `gs://bucket/path` URIs
(globs included), and `/gcs/bucket/path` (the Cloud Storage FUSE mount on Vertex AI).

Reads stream (a 10 GB file is never held in memory); `.gz` files are decompressed on the fly;
writes are atomic (a failed write leaves no partial file or object).

INTERFACE CONTRACT (other modules rely on these names and semantics):
    is_gcs(uri) -> bool
    join(base, *parts) -> str
    expand(pattern) -> list[str]          # sorted matches of a glob, or [uri]; StorageError if none
    exists(uri) -> bool
    open_read(uri, mode="rb"|"rt") -> IO  # streaming, gzip-transparent for *.gz
    open_write(uri, mode="wb"|"wt")       # context manager, atomic
    read_text(uri) / write_text(uri, text)
    read_json(uri) / write_json(uri, obj)
    download_dir(uri, local_dir) -> str   # copy a directory tree to local disk
    upload_dir(local_dir, uri)            # copy a local directory tree to uri
"""

# NOTE: provisional local-only implementation; the storage helper replaces it with the full one.
import contextlib
import glob as _glob
import gzip
import io
import json
import os
import shutil
import tempfile

from rlhf.errors import StorageError


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def expand(pattern: str) -> list[str]:
    if any(c in pattern for c in "*?["):
        matches = sorted(_glob.glob(pattern))
        if not matches:
            raise StorageError(f"{pattern}: the pattern matches no file")
        return matches
    if not os.path.exists(pattern):
        raise StorageError(f"{pattern}: no such file")
    return [pattern]


def exists(uri: str) -> bool:
    return os.path.exists(uri)


def open_read(uri: str, mode: str = "rb"):
    if not os.path.exists(uri):
        raise StorageError(f"{uri}: no such file")
    raw = open(uri, "rb")
    stream = gzip.GzipFile(fileobj=raw) if uri.endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8") if "t" in mode else stream


@contextlib.contextmanager
def open_write(uri: str, mode: str = "wb"):
    directory = os.path.dirname(os.path.abspath(uri))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, mode if "b" in mode else mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, uri)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def read_text(uri: str) -> str:
    with open_read(uri, "rt") as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    with open_write(uri, "wt") as f:
        f.write(text)


def read_json(uri: str):
    return json.loads(read_text(uri))


def write_json(uri: str, obj) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def download_dir(uri: str, local_dir: str) -> str:
    shutil.copytree(uri, local_dir, dirs_exist_ok=True)
    return local_dir


def upload_dir(local_dir: str, uri: str) -> None:
    shutil.copytree(local_dir, uri, dirs_exist_ok=True)
