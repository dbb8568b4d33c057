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
Added here: configure(**settings) -> previous settings (retry timing, timeouts, read chunk size);
BucketNotFoundError (a StorageError subclass).

Details:
- `/gcs/BUCKET/...` is read as a local path when the FUSE mount for BUCKET exists (on Vertex) and
  as `gs://BUCKET/...` otherwise (kfp's local runner hands out `/gcs/` paths that exist nowhere).
- Globs: `*` and `?` never cross `/`, `**` does, `[abc]` is a class (as in `gcloud storage`).
  On Cloud Storage the objects under the text before the first wildcard are listed, then matched.
- Mode "rb" yields raw bytes lines (the data validator checks UTF-8 itself, line by line);
  "rt" decodes UTF-8 strictly.
- Every Cloud Storage call (metadata, list, each read chunk, upload, download) is retried with
  exponential backoff and jitter on 408/429/5xx, connection errors and timeouts, using
  google-cloud-storage's own retry predicate; uploads get the retry explicitly (2.x does not retry
  them by default). A retried upload rewrites the same complete content, so it is safe.
- Cloud Storage writes go to a local temporary file first and are uploaded after the `with` body
  succeeds: an object becomes visible only when its upload completes, so no partial object exists.
- The client is created on first use (imports stay light for `rlhf validate` on local files). It
  honors `STORAGE_EMULATOR_HOST`. Without Google credentials it falls back to an anonymous client:
  public data (Google's sample datasets are public) can still be read; writes fail with a hint.
- Failures a user can fix (missing file, bucket or object, a glob matching nothing, permission
  denied, retries exhausted, bad gzip) raise `StorageError` with a message, never a raw traceback.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import tempfile
import threading
import zlib

from rlhf.errors import StorageError, StorageUnavailable

# --------------------------------------------------------------------------------------------
# Settings: defaults, overridable by RLHF_STORAGE_<NAME> environment variables (they reach kfp
# subprocesses too) and by configure() (tests use it to make retries fast).

_DEFAULTS = {
    "retry_initial": 1.0,      # first backoff, seconds
    "retry_maximum": 32.0,     # longest single backoff, seconds
    "retry_multiplier": 2.0,
    "retry_deadline": 120.0,   # total time spent retrying one call before giving up, seconds
    "timeout": 60.0,           # one HTTP request, seconds
    "chunk_size": 8 << 20,     # bytes fetched per Cloud Storage read request
    "workers": 8,              # parallel transfers in download_dir / upload_dir
    "fuse_root": "/gcs",       # where Vertex mounts buckets
}
_overrides: dict = {}


def configure(**settings) -> dict:
    """Override settings (names as in `_DEFAULTS`; None restores the default). Returns the
    previous overrides for exactly these names, so `configure(**previous)` undoes the change."""
    unknown = set(settings) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown storage settings: {sorted(unknown)}")
    previous = {name: _overrides.get(name) for name in settings}
    for name, value in settings.items():
        if value is None:
            _overrides.pop(name, None)
        else:
            _overrides[name] = type(_DEFAULTS[name])(value)
    return previous


def _setting(name: str):
    if name in _overrides:
        return _overrides[name]
    env = os.environ.get("RLHF_STORAGE_" + name.upper())
    if env:
        try:
            return type(_DEFAULTS[name])(env)
        except ValueError:
            raise StorageError(f"RLHF_STORAGE_{name.upper()}={env!r}: expected a "
                               f"{type(_DEFAULTS[name]).__name__}") from None
    return _DEFAULTS[name]


# --------------------------------------------------------------------------------------------
# Locations

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WILDCARD = re.compile(r"[*?\[]")


class _Loc:
    """Where `uri` really lives: a local path, or a bucket and object name."""

    __slots__ = ("uri", "local", "bucket", "name")

    def __init__(self, uri, local=None, bucket=None, name=None):
        self.uri, self.local, self.bucket, self.name = uri, local, bucket, name

    @property
    def gs(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def _resolve(uri) -> _Loc:
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise StorageError(f"{uri!r}: expected a local path, gs://bucket/path or /gcs/bucket/path")
    if uri.startswith("gs://"):
        bucket, _, name = uri[5:].partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket name; expected gs://BUCKET/PATH")
        if _WILDCARD.search(bucket):
            raise StorageError(f"{uri}: wildcards in bucket names are not supported")
        return _Loc(uri, bucket=bucket, name=name)
    if uri.startswith("file://"):
        return _Loc(uri, local=uri[7:])
    if _SCHEME.match(uri):
        raise StorageError(f"{uri}: unsupported scheme; use a local path, gs://bucket/path "
                           "or /gcs/bucket/path")
    root = _setting("fuse_root").rstrip("/")
    if uri.startswith(root + "/"):
        bucket, _, name = uri[len(root) + 1:].partition("/")
        # The mount exists on Vertex; elsewhere (kfp's local runner) go through the API.
        if bucket and not os.path.isdir(os.path.join(root, bucket)):
            return _Loc(uri, bucket=bucket, name=name)
    return _Loc(uri, local=uri)


def is_gcs(uri: str) -> bool:
    """True when `uri` is read through the Cloud Storage API: `gs://...`, or a `/gcs/...` path
    whose bucket is not mounted here. False for local paths (and mounted `/gcs/` paths)."""
    return _resolve(uri).local is None


def join(base: str, *parts: str) -> str:
    out = os.fspath(base)
    for part in parts:
        part = os.fspath(part).strip("/")
        if part:
            out = out.rstrip("/") + "/" + part
    return out


# --------------------------------------------------------------------------------------------
# Cloud Storage client, retry policy and error messages

class BucketNotFoundError(StorageError):
    """The bucket does not exist, or this account may not see it."""


_client_lock = threading.Lock()
_client_cache: dict = {}
_AUTH_HINT = ("check your credentials: run `gcloud auth application-default login` (or set "
              "GOOGLE_APPLICATION_CREDENTIALS to a service account key); on Vertex AI, grant the "
              "job's service account access to the bucket (roles/storage.objectAdmin)")


def _client():
    """(client, anonymous): one client per process and endpoint, created on first use."""
    key = (os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"),
           os.environ.get("API_ENDPOINT_OVERRIDE"))
    with _client_lock:
        if key not in _client_cache:
            _client_cache.clear()
            _client_cache[key] = _make_client()
        return _client_cache[key]


def _make_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(), False  # the emulator needs no credentials
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, project = google.auth.default()
    except DefaultCredentialsError:
        # Public datasets (Google's samples) stay readable without an account; writes get a hint.
        return storage.Client.create_anonymous_client(), True
    return storage.Client(project=project, credentials=credentials), False


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY  # its predicate: 408, 429, 5xx, network

    retry = DEFAULT_RETRY.with_delay(initial=_setting("retry_initial"),
                                     maximum=_setting("retry_maximum"),
                                     multiplier=_setting("retry_multiplier"))
    with_timeout = getattr(retry, "with_timeout", None) or retry.with_deadline  # api-core < 2.17
    return with_timeout(_setting("retry_deadline"))


def _call_kwargs() -> dict:
    return {"retry": _retry(), "timeout": _setting("timeout")}


_TRANSIENT_CODES = {408, 429, 500, 502, 503, 504}


def _server_message(exc) -> str:
    """The server's own words from a google exception, when there are any."""
    errors = getattr(exc, "errors", None) or []
    for err in errors:
        if isinstance(err, dict) and err.get("message"):
            return err["message"]
    response = getattr(exc, "response", None)
    try:
        body = response.json()
        return body["error"]["message"]
    except Exception:
        pass
    message = getattr(exc, "message", "") or ""
    # Media calls put the expected statuses and URL into the message: keep only the part before.
    message = message.split(": ('Request failed")[0].rsplit(": ", 1)[-1].strip()
    return "" if message.startswith("('Request failed") else message


def _describe(exc) -> str:
    response = getattr(exc, "response", None)
    code = getattr(exc, "code", None) or getattr(response, "status_code", None)
    if code:
        return f"HTTP {int(code)} {_server_message(exc)}".strip()
    return f"{type(exc).__name__}: {exc}"


def _is_transient(exc) -> bool:
    from google.auth.exceptions import TransportError

    if getattr(exc, "code", None) in _TRANSIENT_CODES:
        return True
    if isinstance(exc, (ConnectionError, TimeoutError, TransportError)):
        return True
    import requests.exceptions as rex  # comes with google-cloud-storage

    return isinstance(exc, (rex.ConnectionError, rex.Timeout, rex.ChunkedEncodingError))


def _gcs_error(exc, loc: _Loc, action: str):
    """A StorageError for a Cloud Storage failure a user can act on, or None (a bug: re-raise)."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    where = loc.uri if loc.uri.startswith("gs://") else f"{loc.uri} ({loc.gs})"
    anonymous = _client()[1]
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause or exc
        return StorageUnavailable(
            f"Cloud Storage unavailable after {_setting('retry_deadline'):g} s of retries {action} "
            f"{where}: {_describe(cause)}. Nothing is wrong with the data: try again later, or allow "
            "more time with RLHF_STORAGE_RETRY_DEADLINE=SECONDS.")
    if isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)):
        who = ("no Google credentials were found, so only public data can be read; "
               if anonymous else "")
        return StorageError(f"{where}: permission denied {action} ({_describe(exc)}); "
                            f"{who}{_AUTH_HINT}")
    if isinstance(exc, (auth_exc.DefaultCredentialsError, auth_exc.RefreshError)):
        return StorageError(f"{where}: Google credentials are missing or expired ({exc}); "
                            f"{_AUTH_HINT}")
    if isinstance(exc, gexc.NotFound):
        return _not_found(loc)
    if isinstance(exc, gexc.BadRequest):
        return StorageError(f"{where}: Cloud Storage rejected the request {action} "
                            f"({_describe(exc)}); check the bucket and object names")
    if _is_transient(exc):
        # A transient error that escaped retrying (e.g. a deadline hit mid-request).
        return StorageUnavailable(f"Cloud Storage unavailable {action} {where}: {_describe(exc)}; try again later")
    if isinstance(exc, gexc.GoogleAPICallError):
        return StorageError(f"{where}: failed {action}: {_describe(exc)}; try again later")
    if type(exc).__name__ == "DataCorruption":  # its module differs between 2.x and 3.x
        return StorageError(f"{where}: checksum mismatch {action} (data corrupted in transit); "
                            "try again")
    return None


def _bucket_missing(loc: _Loc) -> BucketNotFoundError:
    mount = ""
    if not loc.uri.startswith("gs://"):
        mount = (f" ({loc.uri} was read as {loc.gs} because no Cloud Storage FUSE mount exists at "
                 f"{os.path.join(_setting('fuse_root'), loc.bucket)})")
    return BucketNotFoundError(
        f"{loc.uri}: bucket {loc.bucket} does not exist or you have no access to it{mount}; "
        f"check the name with `gcloud storage ls gs://{loc.bucket}`")


def _not_found(loc: _Loc) -> StorageError:
    """Tell a missing bucket from a missing object, and show what is there instead."""
    from google.api_core import exceptions as gexc

    client = _client()[0]
    name = loc.name.rstrip("/")
    parent = name.rsplit("/", 1)[0] + "/" if "/" in name else ""

    def names(prefix, limit):
        return [b.name for b in client.list_blobs(loc.bucket, prefix=prefix, max_results=limit,
                                                   **_call_kwargs())]
    try:
        nearby = names(parent, 50)
        is_dir = bool(name) and bool(names(name + "/", 1))
    except gexc.NotFound:
        return _bucket_missing(loc)
    except Exception:  # e.g. no list permission: say what we know
        return StorageError(f"{loc.uri}: no such object (or bucket {loc.bucket} does not exist)")
    if is_dir:
        return StorageError(f"{loc.uri}: is a directory (a prefix of other objects), not an "
                            "object; name a file, or a glob such as "
                            f"gs://{loc.bucket}/{name}/*.jsonl")
    siblings = sorted({n[len(parent):].split("/")[0] + ("/" if "/" in n[len(parent):] else "")
                       for n in nearby})
    there = (f"; gs://{loc.bucket}/{parent} holds: {', '.join(siblings[:8])}"
             + (", ..." if len(siblings) > 8 else "")) if siblings else \
        f"; nothing exists under gs://{loc.bucket}/{parent}"
    return StorageError(f"{loc.uri}: no such object{there}")


@contextlib.contextmanager
def _gcs_errors(loc: _Loc, action: str):
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        error = _gcs_error(exc, loc, action)
        if error is None:
            raise
        raise error from exc


def _local_error(exc: OSError, loc: _Loc, action: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        where = "" if os.path.isabs(loc.local) else f" (relative to {os.getcwd()})"
        return StorageError(f"{loc.uri}: no such file or directory{where}")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{loc.uri}: is a directory; expected a file")
    if isinstance(exc, NotADirectoryError):
        return StorageError(f"{loc.uri}: is a file; expected a directory")
    if isinstance(exc, PermissionError):
        return StorageError(f"{loc.uri}: permission denied {action}")
    return StorageError(f"{loc.uri}: failed {action}: {exc.strerror or exc}")


# --------------------------------------------------------------------------------------------
# Globs

def _glob_regex(pattern: str) -> re.Pattern:
    """gcloud-style glob -> regex: `*`/`?` stay within one path segment, `**` spans segments."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _list_objects(loc: _Loc, prefix: str):
    client = _client()[0]
    with _gcs_errors(loc, "listing objects"):
        try:
            for blob in client.list_blobs(loc.bucket, prefix=prefix, **_call_kwargs()):
                if not blob.name.endswith("/"):  # folder placeholders made by the console
                    yield blob
        except Exception as exc:
            from google.api_core import exceptions as gexc

            if isinstance(exc, gexc.NotFound):  # listing answers 404 only for the bucket
                raise _bucket_missing(loc) from exc
            raise


def _gcs_glob(loc: _Loc) -> list[str]:
    prefix = _WILDCARD.split(loc.name, 1)[0]
    regex = _glob_regex(loc.name)
    return sorted(blob.name for blob in _list_objects(loc, prefix) if regex.match(blob.name))


def expand(pattern: str) -> list[str]:
    """Sorted matches of a glob pattern (local, gs:// or /gcs/), or [pattern] when it has no
    wildcard and exists. StorageError when nothing matches. Matches keep the pattern's form."""
    loc = _resolve(pattern)
    pattern = loc.uri
    if not _WILDCARD.search(pattern):
        if not exists(pattern):
            if loc.local is not None:
                raise _local_error(FileNotFoundError(), loc, "reading")
            raise _not_found(loc)
        return [pattern]
    if loc.local is not None:
        import glob as _glob

        matches = sorted(m for m in _glob.glob(loc.local, recursive=True) if os.path.isfile(m))
        if not matches:
            raise StorageError(f"{pattern}: the pattern matches no file")
        return matches
    names = _gcs_glob(loc)
    if not names:
        prefix = _WILDCARD.split(loc.name, 1)[0]
        raise StorageError(f"{pattern}: the pattern matches no object (searched under "
                           f"gs://{loc.bucket}/{prefix})")
    head = pattern[: len(pattern) - len(loc.name)]  # "gs://b/" or "/gcs/b/"
    return [head + name for name in names]


def exists(uri: str) -> bool:
    """True for an existing file, directory, object, "directory" prefix, or a glob with matches.
    A missing bucket is False; permission errors raise StorageError."""
    loc = _resolve(uri)
    if loc.local is not None:
        if _WILDCARD.search(loc.local):
            import glob as _glob

            return bool(_glob.glob(loc.local, recursive=True))
        return os.path.exists(loc.local)
    try:
        if _WILDCARD.search(loc.name):
            return bool(_gcs_glob(loc))
        client = _client()[0]
        if loc.name:
            with _gcs_errors(loc, "checking existence"):
                if client.bucket(loc.bucket).blob(loc.name).exists(**_call_kwargs()):
                    return True
        prefix = loc.name.rstrip("/") + "/" if loc.name else ""
        return next(iter(_list_objects(loc, prefix)), None) is not None or (
            not loc.name and _bucket_exists(loc))
    except BucketNotFoundError:
        return False


def _bucket_exists(loc: _Loc) -> bool:
    with _gcs_errors(loc, "checking the bucket"):
        return _client()[0].bucket(loc.bucket).exists(**_call_kwargs())


# --------------------------------------------------------------------------------------------
# Reading

class _Reader(io.RawIOBase):
    """The innermost stream seen by the buffer: turns read failures into StorageError with the
    URI (they happen mid-iteration, far from the open call) and closes the whole chain."""

    def __init__(self, stream, closers, uri, translate):
        super().__init__()
        self._stream, self._closers, self._uri, self._translate = stream, closers, uri, translate

    @property
    def name(self):
        return self._uri

    def readable(self):
        return True

    def readinto(self, buffer):
        try:
            data = self._stream.read(len(buffer))
        except StorageError:
            raise
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise StorageError(f"{self._uri}: not a valid gzip file ({exc}); a .gz name means "
                               "gzip-compressed data") from exc
        except Exception as exc:
            error = self._translate(exc)
            if error is None:
                raise
            raise error from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self):
        if not self.closed:
            try:
                for stream in self._closers:
                    stream.close()
            finally:
                super().close()


def _check_mode(mode: str, kind: str) -> bool:
    """True for binary."""
    if mode not in (kind, kind + "b", kind + "t"):
        raise ValueError(f"mode must be {kind!r}, {kind + 'b'!r} or {kind + 't'!r}, not {mode!r}")
    return mode.endswith("b")


def open_read(uri: str, mode: str = "rb"):
    """Open for streaming reads. "rb" gives bytes (iterate for raw lines), "rt"/"r" UTF-8 text.
    `.gz` is decompressed on the fly. Use as a context manager."""
    binary = _check_mode(mode, "r")
    loc = _resolve(uri)
    if loc.local is not None:
        try:
            stream = open(loc.local, "rb")  # noqa: SIM115 - closed by _Reader
        except OSError as exc:
            raise _local_error(exc, loc, "reading") from exc
        decompress = loc.local.endswith(".gz")

        def translate(exc):
            return _local_error(exc, loc, "reading") if isinstance(exc, OSError) else None
    else:
        stream, decompress = _open_blob(loc)

        def translate(exc):
            return _gcs_error(exc, loc, "reading")

    closers = [stream]
    if decompress:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
        closers.insert(0, stream)
    buffered = io.BufferedReader(_Reader(stream, closers, loc.uri, translate), 64 << 10)
    return buffered if binary else io.TextIOWrapper(buffered, encoding="utf-8")


def _open_blob(loc: _Loc):
    if not loc.name or loc.name.endswith("/"):
        raise StorageError(f"{loc.uri}: names a bucket or directory, not an object")
    client = _client()[0]
    bucket = client.bucket(loc.bucket)
    blob = bucket.blob(loc.name)
    with _gcs_errors(loc, "reading"):
        blob.reload(**_call_kwargs())  # a clear error now rather than at the first read
    # Pin the generation so an object replaced while we read is not spliced from two versions.
    pinned = bucket.blob(loc.name, generation=blob.generation)
    # Objects stored with Content-Encoding: gzip (`gcloud storage cp -Z`) would be decompressed by
    # the server, which ignores ranges then; fetch the stored bytes and decompress here instead.
    transcoded = (blob.content_encoding or "").lower() == "gzip"
    reader = pinned.open("rb", chunk_size=_setting("chunk_size"), raw_download=transcoded,
                         **_call_kwargs())
    return reader, transcoded or loc.name.endswith(".gz")


def read_text(uri: str) -> str:
    try:
        with open_read(uri, "rt") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise StorageError(f"{uri}: not valid UTF-8 text ({exc.reason})") from exc


def read_json(uri: str):
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri}:{exc.lineno}: invalid JSON: {exc.msg} "
                           f"(column {exc.colno})") from exc


# --------------------------------------------------------------------------------------------
# Writing

@contextlib.contextmanager
def _encoding_layers(raw, binary: bool, compress: bool, name: str):
    """Gzip and text layers over `raw`; closing them does not close `raw`."""
    with contextlib.ExitStack() as stack:
        stream = raw
        if compress:
            stream = stack.enter_context(
                gzip.GzipFile(filename=name[:-3], fileobj=raw, mode="wb", mtime=0))
        if not binary:
            text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
            if stream is raw:
                # A TextIOWrapper closes what it wraps; detach it so `raw` stays open.
                stack.callback(lambda: (text.flush(), text.detach()))
            else:
                stack.callback(text.close)
            stream = text
        yield stream


_umask_cache: list = []


def _default_mode(directory: bool = False) -> int:
    """What open()/mkdir() would give; mkstemp/mkdtemp make 0600/0700, too strict for outputs
    read by other users (e.g. a serving container)."""
    if not _umask_cache:
        try:  # reading it is side-effect free, unlike os.umask(), which would race with threads
            with open("/proc/self/status") as f:
                _umask_cache.append(next(int(line.split()[1], 8) for line in f
                                         if line.startswith("Umask:")))
        except (OSError, StopIteration, ValueError):
            umask = os.umask(0o022)
            os.umask(umask)
            _umask_cache.append(umask)
    return (0o777 if directory else 0o666) & ~_umask_cache[0]


def _file_mode(existing: str) -> int:
    """Permissions for a new file: the replaced file's, else the default."""
    try:
        return os.stat(existing).st_mode & 0o7777
    except OSError:
        return _default_mode()


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)[:100]}.tmp-"  # hidden, and recognisable if ever left


@contextlib.contextmanager
def open_write(uri: str, mode: str = "wb"):
    """Atomic write: yields a file; the target appears (or is replaced) only when the `with`
    body finishes without an exception. `.gz` targets are gzip-compressed."""
    binary = _check_mode(mode, "w")
    loc = _resolve(uri)
    compress = (loc.local or loc.name).endswith(".gz")
    if loc.local is None:
        if not loc.name or loc.name.endswith("/"):
            raise StorageError(f"{loc.uri}: names a bucket or directory, not an object")
        client, anonymous = _client()
        if anonymous:
            raise StorageError(f"{loc.uri}: writing to Cloud Storage needs credentials and none "
                               f"were found; {_AUTH_HINT}")
        fd, tmp = tempfile.mkstemp(prefix="rlhf-upload-")
        try:
            with os.fdopen(fd, "wb") as raw:
                with _encoding_layers(raw, binary, compress, os.path.basename(loc.name)) as f:
                    yield f
            _upload_file(tmp, loc)
        finally:
            os.remove(tmp)
        return

    path = loc.local
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_tmp_prefix(path))
    except OSError as exc:
        raise _local_error(exc, loc, "writing") from exc
    try:
        with os.fdopen(fd, "wb") as raw:
            with _encoding_layers(raw, binary, compress, os.path.basename(path)) as f:
                yield f
            raw.flush()
            os.fsync(raw.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _content_type(name: str) -> str:
    if name.endswith(".gz"):
        return "application/gzip"
    if name.endswith(".jsonl"):
        return "application/jsonl"
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _upload_file(path: str, loc: _Loc) -> None:
    blob = _client()[0].bucket(loc.bucket).blob(loc.name)
    with _gcs_errors(loc, "writing"):
        # retry= is passed explicitly: google-cloud-storage 2.x does not retry uploads without a
        # generation precondition. The whole file goes in one upload, so a retry is idempotent.
        blob.upload_from_filename(path, content_type=_content_type(loc.name), **_call_kwargs())


def write_text(uri: str, text: str) -> None:
    with open_write(uri, "wt") as f:
        f.write(text)


def write_json(uri: str, obj) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Directories (model checkpoints)

def _run_parallel(jobs) -> None:
    """Run callables on a few threads; the first failure cancels what has not started."""
    jobs = list(jobs)
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(_setting("workers"), len(jobs)))
    try:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _copy_local_file(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst) or ".", prefix=_tmp_prefix(dst))
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _safe_relative(rel: str, uri: str) -> str:
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"{uri}: object name part {rel!r} cannot be a local file name")
    return os.path.join(*parts)


def download_dir(uri: str, local_dir: str) -> str:
    """Copy every file under `uri` (a directory or gs:// prefix) into `local_dir`; returns
    `local_dir`. Each file appears atomically; a new `local_dir` appears only when complete."""
    loc = _resolve(uri)
    local_dir = os.fspath(local_dir)
    if loc.local is not None:
        if not os.path.isdir(loc.local):
            raise _local_error(FileNotFoundError() if not os.path.exists(loc.local)
                               else NotADirectoryError(), loc, "reading")
        if os.path.realpath(loc.local) == os.path.realpath(local_dir):
            return local_dir
        files = []
        for root, _, names in os.walk(loc.local, followlinks=True):
            for name in names:
                files.append(os.path.relpath(os.path.join(root, name), loc.local))
        if not files:
            raise StorageError(f"{uri}: the directory is empty")

        def copy_to(target):
            return [lambda rel=rel: _copy_local_file(os.path.join(loc.local, rel),
                                                     os.path.join(target, rel)) for rel in files]
    else:
        prefix = loc.name.rstrip("/") + "/" if loc.name.rstrip("/") else ""
        blobs = list(_list_objects(loc, prefix))
        if not blobs:
            if _bucket_exists(loc):
                raise StorageError(f"{uri}: no objects under gs://{loc.bucket}/{prefix}")
            raise _bucket_missing(loc)
        files = [(blob, _safe_relative(blob.name[len(prefix):], uri)) for blob in blobs]

        def copy_to(target):
            return [lambda blob=blob, rel=rel: _download_blob(blob, os.path.join(target, rel), loc)
                    for blob, rel in files]

    fresh = not os.path.exists(local_dir)
    target = local_dir
    if fresh:  # fill a sibling, then rename: the directory appears complete or not at all
        parent = os.path.dirname(os.path.abspath(local_dir))
        os.makedirs(parent, exist_ok=True)
        target = tempfile.mkdtemp(dir=parent, prefix=_tmp_prefix(local_dir))
    try:
        _run_parallel(copy_to(target))
        if fresh:
            os.chmod(target, _default_mode(directory=True))
            os.replace(target, local_dir)
    except BaseException:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return local_dir


def _download_blob(blob, dst: str, loc: _Loc) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=_tmp_prefix(dst))
    os.close(fd)
    try:
        with _gcs_errors(_Loc(f"gs://{loc.bucket}/{blob.name}", bucket=loc.bucket,
                              name=blob.name), "downloading"):
            blob.download_to_filename(tmp, **_call_kwargs())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy every file under `local_dir` to `uri` (a directory, gs:// prefix or /gcs/ path).
    Each file appears atomically; existing files with other names are left alone."""
    local_dir = os.fspath(local_dir)
    src = _Loc(local_dir, local=local_dir)
    if not os.path.isdir(local_dir):
        raise _local_error(FileNotFoundError() if not os.path.exists(local_dir)
                           else NotADirectoryError(), src, "reading")
    files = []
    for root, _, names in os.walk(local_dir, followlinks=True):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), local_dir))
    loc = _resolve(uri)
    if loc.local is not None:
        if os.path.realpath(loc.local) != os.path.realpath(local_dir):
            _run_parallel(lambda rel=rel: _copy_local_file(os.path.join(local_dir, rel),
                                                           os.path.join(loc.local, rel))
                          for rel in files)
        return
    if _client()[1]:
        raise StorageError(f"{uri}: writing to Cloud Storage needs credentials and none were "
                           f"found; {_AUTH_HINT}")
    base = loc.name.rstrip("/")

    def upload(rel):
        name = (base + "/" if base else "") + rel.replace(os.sep, "/")
        _upload_file(os.path.join(local_dir, rel),
                     _Loc(f"gs://{loc.bucket}/{name}", bucket=loc.bucket, name=name))

    _run_parallel(lambda rel=rel: upload(rel) for rel in files)
