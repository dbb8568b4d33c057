"""A fault-injecting HTTP proxy to put in front of the Cloud Storage emulator.

Point STORAGE_EMULATOR_HOST at `proxy.host` and every Cloud Storage request passes through it;
`proxy.fail(...)` makes the next matching requests fail (an HTTP error with a Cloud Storage JSON
error body, a dropped connection, or a delay), `proxy.answer(...)` gives them a canned JSON reply
(e.g. a bucket `testIamPermissions` that grants less than the emulator's allow-all stub);
everything else is forwarded unchanged. The Host header is forwarded as is, so the URLs the
emulator hands out (resumable uploads) lead back here.

    with FaultProxy(gcs_emulator.host) as proxy:
        proxy.fail(503, times=2, method="GET", path=DOWNLOAD)
        ...
        proxy.injected(), proxy.log  # what happened
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

# Path patterns (regexes searched in "/path?query") for the kinds of Cloud Storage requests.
DOWNLOAD = r"^/download/"           # object media reads (one per chunk)
UPLOAD = r"^/upload/"               # object uploads (multipart or resumable)
LIST = r"^/storage/v1/b/[^/]+/o(\?|$)"  # object listing
METADATA = r"^/storage/v1/b/[^/]+/o/[^?]+"  # object metadata (reload, exists)
BUCKET_IAM_TEST = r"^/storage/v1/b/[^/]+/iam/testPermissions"  # bucket testIamPermissions

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length"}
_REASONS = {403: "forbidden", 404: "notFound", 429: "rateLimitExceeded", 500: "backendError",
            502: "badGateway", 503: "backendError", 504: "gatewayTimeout"}


@dataclass
class Fault:
    status: int               # HTTP status to answer; 0 drops the connection without answering
    times: int | None         # how many requests to fail; None: every matching request
    method: str | None        # e.g. "GET"; None: any
    path: str | None          # regex searched in "/path?query"; None: any
    delay: float = 0.0        # seconds to wait first (a "timeout" when > the client's timeout)
    message: str = ""
    injected: int = 0
    payload: dict | None = None  # a canned JSON reply (answer()) instead of an error body

    def matches(self, method: str, path: str) -> bool:
        return ((self.times is None or self.injected < self.times)
                and (self.method is None or self.method == method)
                and (self.path is None or re.search(self.path, path) is not None))


@dataclass
class Record:
    method: str
    path: str
    status: int               # what the client got (0: connection dropped)
    body_bytes: int           # response body bytes sent to the client


@dataclass
class FaultProxy:
    upstream: str             # "http://127.0.0.1:PORT"
    faults: list[Fault] = field(default_factory=list)
    log: list[Record] = field(default_factory=list)

    def __post_init__(self):
        parsed = urllib.parse.urlsplit(self.upstream)
        self._upstream = (parsed.hostname, parsed.port)
        self._lock = threading.Lock()
        self._server = None

    # -- control ------------------------------------------------------------------------------
    def fail(self, status: int = 503, times: int | None = 1, method: str | None = None,
             path: str | None = None, delay: float = 0.0, message: str = "") -> Fault:
        fault = Fault(status, times, method, path, delay,
                      message or f"injected {status or 'dropped connection'}")
        with self._lock:
            self.faults.append(fault)
        return fault

    def answer(self, payload: dict, status: int = 200, times: int | None = None,
               method: str | None = None, path: str | None = None) -> Fault:
        """Reply `payload` (JSON) to matching requests instead of forwarding them."""
        fault = Fault(status, times, method, path, payload=payload)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()

    def injected(self) -> int:
        return sum(f.injected for f in self.faults)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Record]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method)
                    and (path is None or re.search(path, r.path))]

    @property
    def host(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the proxy ----------------------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.injected += 1
                    return fault
        return None

    def _record(self, *args) -> Record:
        record = Record(*args)
        with self._lock:
            self.log.append(record)
        return record

    def _handler_class(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: simple and enough

            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status == 0:
                    # RST instead of FIN: the client sees "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    proxy._record(self.command, self.path, 0, 0)
                    return
                if fault is not None and fault.payload is not None:
                    self._reply(fault.status, [("Content-Type", "application/json")],
                                json.dumps(fault.payload).encode())
                    return
                if fault is not None and fault.status:
                    payload = json.dumps({"error": {
                        "code": fault.status, "message": fault.message,
                        "errors": [{"message": fault.message, "domain": "global",
                                    "reason": _REASONS.get(fault.status, "error")}]}}).encode()
                    self._reply(fault.status, [("Content-Type", "application/json")], payload)
                    return
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    out_headers = [(k, v) for k, v in response.getheaders()
                                   if k.lower() not in _HOP_BY_HOP]
                    self._reply(response.status, out_headers, payload)
                finally:
                    upstream.close()

            def _reply(self, status, headers, payload):
                # Recorded before the write: the client may act on the reply (and a test read the
                # log) before this thread runs again.
                record = proxy._record(self.command, self.path, status, len(payload))
                try:
                    self.send_response(status)
                    for key, value in headers:
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    record.body_bytes = 0

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler
