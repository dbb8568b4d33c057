"""Local HTTP stand-ins of the Vertex AI (pipeline jobs, custom jobs, models, endpoints) and Kubeflow
Pipelines REST APIs, of the Kubernetes API's custom objects (TrainJobs, PyTorchJobs), of a container
registry (Docker Registry HTTP API v2 manifests, with the Bearer token dance) and of IAM's service accounts.

They answer just enough of each API for the real clients (`google.cloud.aiplatform` with
`api_transport="rest"`, `kfp.Client`) to submit a run, poll it, upload a model and deploy it, and
they record every request (method, path, query, JSON body, headers) so a test can assert on exactly what
was sent. Each runs in a thread on a free 127.0.0.1 port:

    with VertexStandIn() as vertex:
        ... aiplatform.init(api_endpoint=vertex.url, api_transport="rest", ...)
        assert vertex.requests[0].body["runtimeConfig"]["parameterValues"] == {...}
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)  # names lowercased


@dataclass
class _Route:
    method: str
    pattern: re.Pattern
    handler: Callable[..., tuple[int, Any]]


class StandIn:
    """A threaded HTTP server answering JSON routes and recording every request."""

    def __init__(self):
        self.requests: list[Request] = []
        self._routes: list[_Route] = []
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def route(self, method: str, pattern: str, handler: Callable[..., tuple[int, Any]]) -> None:
        self._routes.append(_Route(method, re.compile(pattern + r"$"), handler))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def requests_to(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(path_regex, r.path)]

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        request = Request(method, parts.path, parse_qs(parts.query), body,
                          {k.lower(): v for k, v in handler.headers.items()})
        self.requests.append(request)
        headers: dict[str, str] = {}
        for route in self._routes:
            match = route.pattern.match(parts.path)
            if route.method == method and match:
                status, payload, *extra = route.handler(request, *match.groups())
                headers = extra[0] if extra else {}  # a handler may add response headers
                break
        else:
            status, payload = 404, {"error": {"code": 404, "message": f"no stand-in route for {method} {parts.path}",
                                               "status": "NOT_FOUND"}}
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    def start(self) -> "StandIn":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer._handle(self, "GET")

            def do_HEAD(self):
                outer._handle(self, "HEAD")

            def do_POST(self):
                outer._handle(self, "POST")

            def do_DELETE(self):
                outer._handle(self, "DELETE")

            def do_PATCH(self):
                outer._handle(self, "PATCH")

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)  # stop() waits up to one poll
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


_LOC = r"/v1/projects/([^/]+)/locations/([^/]+)"


class VertexStandIn(StandIn):
    """`pipelineJobs` create/get, `models:upload`, `endpoints` create and `deployModel`, and the
    long-running operations they return (done at once). `final_state` is what a polled job reports.

    `customJobs` create/get/`:cancel`: each GET of a custom job moves it one step along
    `custom_job_states` (default queued, pending, running, succeeded) and stays on the last;
    `custom_job_error` is its error when that is JOB_STATE_FAILED; `:cancel` makes it CANCELLING,
    then CANCELLED on the next GET. `on_custom_job_state(job, state)` is called on each move (a test
    writes what rank 0 would have written when it reaches JOB_STATE_SUCCEEDED)."""

    def __init__(self, final_state: str = "PIPELINE_STATE_SUCCEEDED",
                 custom_job_states=("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING",
                                    "JOB_STATE_SUCCEEDED"),
                 custom_job_error: str = "", on_custom_job_state: Optional[Callable[[dict, str], None]] = None):
        super().__init__()
        self.final_state = final_state
        self.jobs: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.endpoints: dict[str, dict] = {}
        self.custom_jobs: dict[str, dict] = {}
        self.custom_job_states = list(custom_job_states)
        self.custom_job_error = custom_job_error
        self.on_custom_job_state = on_custom_job_state
        self._steps: dict[str, int] = {}
        self.route("POST", _LOC + r"/customJobs", self._create_custom_job)
        self.route("GET", _LOC + r"/customJobs/([^/:]+)", self._get_custom_job)
        self.route("POST", _LOC + r"/customJobs/([^/:]+):cancel", self._cancel_custom_job)
        self.route("POST", _LOC + r"/pipelineJobs", self._create_job)
        self.route("GET", _LOC + r"/pipelineJobs/([^/]+)", self._get_job)
        self.route("POST", _LOC + r"/models:upload", self._upload_model)
        self.route("GET", _LOC + r"/models/([^/:]+)", self._get_model)
        self.route("POST", _LOC + r"/endpoints", self._create_endpoint)
        self.route("GET", _LOC + r"/endpoints/([^/:]+)", self._get_endpoint)
        self.route("POST", _LOC + r"/endpoints/([^/:]+):deployModel", self._deploy_model)

    def _create_job(self, request, project, location):
        job_id = (request.query.get("pipelineJobId") or [uuid.uuid4().hex[:12]])[0]
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job_id}"
        job = dict(request.body or {}, name=name, state="PIPELINE_STATE_RUNNING",
                   createTime="2024-01-01T00:00:00Z")
        self.jobs[name] = job
        return 200, job

    def add_pipeline_job(self, project: str, location: str, job_id: str, **fields) -> dict:
        """A running pipeline job as Vertex would answer GET (serviceAccount, network, labels...)."""
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job_id}"
        self.jobs[name] = dict(fields, name=name, state="PIPELINE_STATE_RUNNING", createTime="2024-01-01T00:00:00Z")
        return self.jobs[name]

    def _create_custom_job(self, request, project, location):
        job_id = str(len(self.custom_jobs) + 7000)
        name = f"projects/{project}/locations/{location}/customJobs/{job_id}"
        job = dict(request.body or {}, name=name, state="JOB_STATE_QUEUED", createTime="2024-01-01T00:00:00Z")
        self.custom_jobs[name] = job
        self._steps[name] = 0
        return 200, job

    def _move(self, job: dict, state: str) -> None:
        if job["state"] == state:
            return
        job["state"] = state
        if state == "JOB_STATE_FAILED":
            job["error"] = {"code": 3, "message": self.custom_job_error or "the job failed"}
        if self.on_custom_job_state:
            self.on_custom_job_state(job, state)

    def _get_custom_job(self, request, project, location, job_id):
        name = f"projects/{project}/locations/{location}/customJobs/{job_id}"
        if name not in self.custom_jobs:
            return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
        job = self.custom_jobs[name]
        if job["state"] == "JOB_STATE_CANCELLING":
            self._move(job, "JOB_STATE_CANCELLED")
        elif job["state"] not in ("JOB_STATE_CANCELLED",):
            step = min(self._steps[name], len(self.custom_job_states) - 1)
            self._steps[name] += 1
            self._move(job, self.custom_job_states[step])
        return 200, job

    def _cancel_custom_job(self, request, project, location, job_id):
        name = f"projects/{project}/locations/{location}/customJobs/{job_id}"
        self._move(self.custom_jobs[name], "JOB_STATE_CANCELLING")
        return 200, {}

    def _get_job(self, request, project, location, job_id):
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job_id}"
        if name not in self.jobs:
            return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
        job = dict(self.jobs[name], state=self.final_state)
        if self.final_state == "PIPELINE_STATE_FAILED":
            job["error"] = {"code": 9, "message": "a task failed"}
        return 200, job

    @staticmethod
    def _operation(name: str, response: dict, type_url: str) -> dict:
        return {"name": f"{name}/operations/{uuid.uuid4().hex[:8]}", "done": True,
                "response": dict(response, **{"@type": type_url})}

    def _upload_model(self, request, project, location):
        model_id = str(len(self.models) + 1000)
        name = f"projects/{project}/locations/{location}/models/{model_id}"
        # Vertex marks a custom-container model as deployable on dedicated machines.
        model = dict((request.body or {}).get("model", {}), name=name, versionId="1",
                     supportedDeploymentResourcesTypes=["DEDICATED_RESOURCES"])
        self.models[name] = model
        return 200, self._operation(name, {"model": name, "modelVersionId": "1"},
                                    "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse")

    def _get_model(self, request, project, location, model_id):
        model_id = unquote(model_id).split("@")[0]  # models/ID@VERSION
        name = f"projects/{project}/locations/{location}/models/{model_id}"
        return (200, self.models[name]) if name in self.models else (404, {"error": {"code": 404}})

    def _create_endpoint(self, request, project, location):
        endpoint_id = str(len(self.endpoints) + 2000)
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        endpoint = dict(request.body or {}, name=name)
        self.endpoints[name] = endpoint
        return 200, self._operation(name, endpoint, "type.googleapis.com/google.cloud.aiplatform.v1.Endpoint")

    def _get_endpoint(self, request, project, location, endpoint_id):
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        return (200, self.endpoints[name]) if name in self.endpoints else (404, {"error": {"code": 404}})

    def _deploy_model(self, request, project, location, endpoint_id):
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        deployed = dict((request.body or {}).get("deployedModel", {}), id=uuid.uuid4().hex[:8])
        self.endpoints[name].setdefault("deployedModels", []).append(deployed)
        return 200, self._operation(name, {"deployedModel": deployed},
                                    "type.googleapis.com/google.cloud.aiplatform.v1.DeployModelResponse")


class KfpStandIn(StandIn):
    """The KFP v2beta1 REST API: healthz, experiments (list, create), runs (create, get)."""

    def __init__(self, final_state: str = "SUCCEEDED"):
        super().__init__()
        self.final_state = final_state
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        base = r"/apis/v2beta1"
        self.route("GET", base + r"/healthz", lambda r: (200, {"commit_sha": "standin", "tag_name": "2.4.0",
                                                               "multi_user": False}))
        self.route("GET", base + r"/experiments", self._list_experiments)
        self.route("POST", base + r"/experiments", self._create_experiment)
        self.route("GET", base + r"/experiments/([^/]+)", self._get_experiment)
        self.route("POST", base + r"/runs", self._create_run)
        self.route("GET", base + r"/runs/([^/]+)", self._get_run)

    def _list_experiments(self, request):
        wanted = None
        raw_filter = (request.query.get("filter") or [None])[0]
        if raw_filter:
            for predicate in json.loads(raw_filter).get("predicates", []):
                if predicate.get("key") == "display_name":
                    wanted = predicate.get("string_value") or predicate.get("stringValue")
        found = [e for e in self.experiments.values() if wanted is None or e["display_name"] == wanted]
        return 200, {"experiments": found, "total_size": len(found)} if found else {}

    def _create_experiment(self, request):
        experiment_id = uuid.uuid4().hex[:12]
        experiment = dict(request.body or {}, experiment_id=experiment_id)
        self.experiments[experiment_id] = experiment
        return 200, experiment

    def _get_experiment(self, request, experiment_id):
        return 200, self.experiments[experiment_id]

    def _create_run(self, request):
        run_id = uuid.uuid4().hex[:12]
        run = dict(request.body or {}, run_id=run_id, state="RUNNING", created_at="2024-01-01T00:00:00Z")
        self.runs[run_id] = run
        return 200, run

    def _get_run(self, request, run_id):
        return 200, dict(self.runs[run_id], state=self.final_state, finished_at="2024-01-01T00:01:00Z")


class RegistryStandIn(StandIn):
    """The Docker Registry HTTP API v2 manifest endpoint, `HEAD`/`GET /v2/<name>/manifests/<ref>`,
    holding `images` ("REPOSITORY:TAG" or "REPOSITORY@DIGEST", without the host).

    auth="none": anyone may read. auth="token": a request without a token it issued gets 401 with
    `WWW-Authenticate: Bearer realm="<url>/token",service="standin-registry",scope="repository:R:pull"`
    (Docker Hub's answer); `GET /token` hands out an anonymous pull token that reads the repositories
    in `public` (default: every repository holding an image) and nothing else, so a private or
    missing repository gets 401 again, as on Docker Hub. `access_tokens`: bearer tokens accepted as
    they are (Artifact Registry takes the caller's Google access token)."""

    SERVICE = "standin-registry"

    def __init__(self, images=(), auth: str = "none", public=None, access_tokens=()):
        super().__init__()
        self.images = set(images)
        self.auth = auth
        self.public = set(public) if public is not None else {self._repository(i) for i in self.images}
        self.access_tokens = set(access_tokens)
        for method in ("HEAD", "GET"):
            self.route(method, r"/v2/(.+)/manifests/([^/]+)", self._manifest)
        self.route("GET", r"/token", self._token)

    @staticmethod
    def _repository(image: str) -> str:
        return image.split("@")[0] if "@" in image else image.rsplit(":", 1)[0]

    def _manifest(self, request, repository, reference):
        reference = unquote(reference)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        allowed = (self.auth == "none" or bearer in self.access_tokens
                   or (bearer.startswith("anon:") and bearer[len("anon:"):] in self.public
                       and bearer[len("anon:"):] == repository))
        if not allowed:
            challenge = (f'Bearer realm="{self.url}/token",service="{self.SERVICE}",'
                         f'scope="repository:{repository}:pull"')
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, \
                {"WWW-Authenticate": challenge}
        separator = "@" if reference.startswith("sha256:") else ":"
        if f"{repository}{separator}{reference}" not in self.images:
            return 404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
        return 200, manifest, {"Content-Type": "application/vnd.oci.image.index.v1+json",
                               "Docker-Content-Digest": "sha256:" + "0" * 64}

    def _token(self, request):
        scope = (request.query.get("scope") or [""])[0]  # repository:NAME:pull
        repository = scope.split(":")[1] if scope.count(":") >= 2 else ""
        if (request.query.get("service") or [""])[0] != self.SERVICE:
            return 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]}
        return 200, {"token": f"anon:{repository}" if repository in self.public else "anon:-"}


class IamStandIn(StandIn):
    """IAM's service accounts: `GET /v1/projects/-/serviceAccounts/EMAIL` and
    `POST /v1/projects/-/serviceAccounts/EMAIL:testIamPermissions`. `accounts` maps each existing
    account to the permissions the caller holds on it; testIamPermissions answers, as IAM does, the
    asked permissions the caller holds (an empty answer is `{}`)."""

    def __init__(self, accounts: Optional[dict[str, set[str]]] = None):
        super().__init__()
        self.accounts = {email: set(perms) for email, perms in (accounts or {}).items()}
        base = r"/v1/projects/([^/]+)/serviceAccounts/([^/:]+)"
        self.route("GET", base, self._get)
        self.route("POST", base + r":testIamPermissions", self._test_permissions)

    @staticmethod
    def _missing(email):
        return 404, {"error": {"code": 404, "message": f"Unknown service account {email}", "status": "NOT_FOUND"}}

    def _get(self, request, project, email):
        email = unquote(email)
        if email not in self.accounts:
            return self._missing(email)
        account_project = email.split("@")[1].split(".")[0]
        return 200, {"name": f"projects/{account_project}/serviceAccounts/{email}", "email": email,
                     "projectId": account_project, "uniqueId": "1" + str(abs(hash(email)))[:20]}

    def _test_permissions(self, request, project, email):
        email = unquote(email)
        if email not in self.accounts:
            return self._missing(email)
        asked = (request.body or {}).get("permissions", [])
        held = [p for p in asked if p in self.accounts[email]]
        return 200, {"permissions": held} if held else {}


class KubernetesStandIn(StandIn):
    """The Kubernetes API's custom objects, as the `kubernetes` client calls them: create
    (`POST /apis/GROUP/VERSION/namespaces/NS/PLURAL`), get and delete (`.../PLURAL/NAME`). Each GET
    moves an object one step along `conditions` (a list of condition lists, e.g. [[], [Created],
    [Created, Complete]]) and stays on the last; a deleted object answers 404."""

    def __init__(self, conditions=((),)):
        super().__init__()
        self.conditions = [list(c) for c in conditions]
        self.objects: dict[str, dict] = {}
        self.deleted: list[str] = []
        self._steps: dict[str, int] = {}
        base = r"/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)"
        self.route("POST", base, self._create)
        self.route("GET", base + r"/([^/]+)", self._get)
        self.route("DELETE", base + r"/([^/]+)", self._delete)

    @staticmethod
    def _key(group, version, namespace, plural, name) -> str:
        return f"{group}/{version}/{namespace}/{plural}/{name}"

    @staticmethod
    def _missing(name):
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                     "message": f"{name} not found", "code": 404}

    def _create(self, request, group, version, namespace, plural):
        body = dict(request.body)
        name = body["metadata"]["name"]
        key = self._key(group, version, namespace, plural, name)
        if key in self.objects:
            return 409, {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409}
        body["metadata"] = dict(body["metadata"], uid=uuid.uuid4().hex, creationTimestamp="2024-01-01T00:00:00Z")
        self.objects[key] = body
        self._steps[key] = 0
        return 201, body

    def _get(self, request, group, version, namespace, plural, name):
        key = self._key(group, version, namespace, plural, name)
        if key not in self.objects:
            return self._missing(name)
        step = min(self._steps[key], len(self.conditions) - 1)
        self._steps[key] += 1
        obj = dict(self.objects[key], status={"conditions": self.conditions[step]})
        return 200, obj

    def _delete(self, request, group, version, namespace, plural, name):
        key = self._key(group, version, namespace, plural, name)
        if key not in self.objects:
            return self._missing(name)
        self.deleted.append(key)
        del self.objects[key]
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
