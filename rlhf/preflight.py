"""Check, before a run is sent, what would otherwise fail it only after Vertex AI has provisioned
machines: images that do not exist, datasets that match nothing, a pipeline-root bucket that is
missing or not writable, a service account the submitter may not act as.

`preflight(template, ...)` runs every check (concurrently; a second or so against Google) and
returns every `Problem` found, each saying what is wrong and what to do; `rlhf submit` lists them
together and exits 2 before sending anything. Checks:

- **Images**: every container image of the template (and `serving_container_image_uri` when
  `deploy_model` is on) must exist: a manifest request (HEAD, GET where HEAD is refused) to the
  registry's Docker Registry HTTP API v2. Artifact Registry and Container Registry hosts
  (`*-docker.pkg.dev`, `gcr.io`, `*.gcr.io`) get the caller's Google access token
  (`Authorization: Bearer`); other registries are asked anonymously, with the standard token dance
  on a 401 (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`, as Docker Hub does). A
  template naming `components.image.DEFAULT_REGISTRY`, where nothing is published, is refused
  without any network request. On a Kubeflow cluster (`target="kfp"`) image findings are warnings:
  the cluster may reach registries this machine cannot, or hold images loaded with `kind load`.
- **Datasets**: every `*_dataset` parameter with a `gs://` (or, on Vertex, `/gcs/`) value matches
  at least one object (globs as in `rlhf.storage.expand`).
- **Pipeline root** (Vertex): its bucket exists and the caller holds `storage.objects.create` and
  `storage.objects.get` on it (Cloud Storage `testIamPermissions`). That call answers for the
  caller, not for the service account the run uses: the run's account needs the same permissions.
- **Service account** (Vertex, with `service_account`): it exists (IAM `GET
  projects/-/serviceAccounts/EMAIL`) and the caller may act as it (`iam.serviceAccounts.actAs`
  through IAM `testIamPermissions`), which `roles/iam.serviceAccountUser` grants.

Endpoints, for private networks and for tests (constructor arguments win over the variables):
    RLHF_REGISTRY_ENDPOINTS  "HOST=URL[,HOST=URL...]": where to reach a registry host, e.g.
                             "us-docker.pkg.dev=http://127.0.0.1:5000" (default https://HOST)
    RLHF_IAM_ENDPOINT        the IAM API root (default https://iam.googleapis.com)
    STORAGE_EMULATOR_HOST    Cloud Storage (google-cloud-storage's own variable)
An `http://` endpoint (a local stand-in or a plain-HTTP proxy) is spoken to with
`AnonymousCredentials`, as `rlhf submit --api-endpoint http://...` does, so nothing looks for Google
credentials or a metadata server; `https://` endpoints use application-default credentials.
Nothing here imports kfp or aiplatform.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

from rlhf.errors import UserError

log = logging.getLogger(__name__)

IAM_ENDPOINT = "https://iam.googleapis.com"
REGISTRY_ENDPOINTS_ENV = "RLHF_REGISTRY_ENDPOINTS"
IAM_ENDPOINT_ENV = "RLHF_IAM_ENDPOINT"
ACT_AS = "iam.serviceAccounts.actAs"
BUCKET_PERMISSIONS = ("storage.objects.create", "storage.objects.get")
SERVING_IMAGE_PARAMETER = "serving_container_image_uri"
TIMEOUT_S = 10.0  # one HTTP request; Cloud Storage calls also stop retrying after 2 x this

_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Index types first: Vertex pulls multi-platform images by their index.
_MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
_RLHF_IMAGE = re.compile(r"^(?P<registry>.+)/rlhf-(cpu|gpu):[^/@]+$")
_CHALLENGE_FIELD = re.compile(r'(\w+)="([^"]*)"')
_SKIP_HINT = "or pass --skip-preflight if this machine cannot reach it (e.g. a private network)"


@dataclass(frozen=True)
class Problem:
    """One finding: `subject` (an image, a parameter, a bucket, an account) and `message` (what is
    wrong, then what to do). `blocking=False` is a warning: the run may still work."""
    check: str  # "image", "dataset", "bucket", "service-account" or "credentials"
    subject: str
    message: str
    blocking: bool = True

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass(frozen=True)
class ImageRef:
    host: str        # registry host as written ("docker.io" for Docker Hub)
    repository: str  # path inside the registry ("library/python" for "python")
    reference: str   # tag or digest

    @classmethod
    def parse(cls, image: str) -> "ImageRef":
        """`HOST/PATH:TAG`, `HOST/PATH@sha256:...`, or a Docker Hub short name (`python:3.11`)."""
        name, _, digest = image.partition("@")
        tag = ""
        if not digest and ":" in name.rsplit("/", 1)[-1]:
            name, tag = name.rsplit(":", 1)
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            host, repository = first, rest
        else:
            host, repository = "docker.io", name if "/" in name else f"library/{name}"
        return cls(host, repository, digest or tag or "latest")


def is_google_registry(host: str) -> bool:
    """Artifact Registry (`LOCATION-docker.pkg.dev`) or Container Registry (`gcr.io`, `*.gcr.io`)."""
    host = host.split(":")[0]
    return host.endswith("-docker.pkg.dev") or host == "gcr.io" or host.endswith(".gcr.io")


def template_images(template) -> list[str]:
    """Every container image the compiled template's executors name, sorted."""
    executors = (template.spec.get("deploymentSpec") or {}).get("executors") or {}
    images = {(e.get("container") or {}).get("image") for e in executors.values()}
    return sorted(i for i in images if i)


def _placeholder_images(images) -> list[str]:
    from components.image import DEFAULT_REGISTRY
    return [i for i in images if i.startswith(DEFAULT_REGISTRY + "/")]


def _value(template, values: Mapping[str, Any], name: str) -> Any:
    if name in values:
        return values[name]
    param = template.parameters.get(name)
    return param.default if param is not None else None


class _NoCredentials(Exception):
    pass


class Preflight:
    """The checks of one submission. `preflight(...)` below is the usual way in; the arguments are
    the same."""

    def __init__(self, template, *, parameter_values: Optional[Mapping[str, Any]] = None,
                 pipeline_root: Optional[str] = None, service_account: Optional[str] = None,
                 project: Optional[str] = None, location: Optional[str] = None,
                 target: Optional[str] = None, credentials=None,
                 registry_endpoints: Optional[Mapping[str, str]] = None,
                 iam_endpoint: Optional[str] = None, timeout_s: float = TIMEOUT_S):
        if isinstance(template, str):
            from rlhf.parameters import load_template
            template = load_template(template)
        self.template = template
        self.values = dict(parameter_values or {})
        self.pipeline_root = pipeline_root
        self.service_account = service_account
        self.project = project
        self.location = location
        self.target = target or ("kfp" if template.target == "kfp" else "vertex")
        self.timeout_s = timeout_s
        self.registry_endpoints = (dict(registry_endpoints) if registry_endpoints is not None
                                   else _parse_endpoints(os.environ.get(REGISTRY_ENDPOINTS_ENV, "")))
        self.iam_endpoint = (iam_endpoint or os.environ.get(IAM_ENDPOINT_ENV) or IAM_ENDPOINT).rstrip("/")
        self._given_credentials = credentials
        self._default_credentials = None
        self._lock = threading.Lock()

    # -- what is checked ---------------------------------------------------------------------
    def images(self) -> dict[str, Optional[str]]:
        """image -> the parameter that names it (None: the template's executors)."""
        out: dict[str, Optional[str]] = {image: None for image in template_images(self.template)}
        serving = _value(self.template, self.values, SERVING_IMAGE_PARAMETER)
        if self.target == "vertex" and serving and _value(self.template, self.values, "deploy_model"):
            out.setdefault(serving, SERVING_IMAGE_PARAMETER)
        return out

    def datasets(self) -> list[tuple[str, str]]:
        """(parameter, URI) of every Cloud Storage dataset the run reads."""
        prefixes = ("gs://", "/gcs/") if self.target == "vertex" else ("gs://",)
        out = []
        for name in sorted(self.template.parameters):
            value = _value(self.template, self.values, name)
            if name.endswith("_dataset") and isinstance(value, str) and value.startswith(prefixes):
                out.append((name, value))
        return out

    # -- running -----------------------------------------------------------------------------
    def static_problems(self) -> list[Problem]:
        """What needs no network: a template still naming the placeholder registry."""
        placeholder = _placeholder_images(self.images())
        if not placeholder:
            return []
        from components.image import DEFAULT_REGISTRY
        registry = (f"{self.location}-docker.pkg.dev/{self.project}/rlhf" if self.project and self.location
                    else "us-central1-docker.pkg.dev/PROJECT/rlhf")
        subject = ", ".join(placeholder)
        how = _build_and_push(registry)
        if self.target == "kfp":
            return [Problem("image", subject, (
                f"the template names the placeholder registry {DEFAULT_REGISTRY} (components/image.py "
                f"DEFAULT_REGISTRY), where no image is published; unless these images are loaded into the "
                f"cluster's nodes (`make images` then `kind load docker-image ...`), {how}"), blocking=False)]
        return [Problem("image", subject, (
            f"the template names the placeholder registry {DEFAULT_REGISTRY} (components/image.py "
            f"DEFAULT_REGISTRY), where no image is published, so every task would fail to pull its image; "
            f"{how}"))]

    def run(self, network: bool = True) -> list[Problem]:
        problems = self.static_problems()
        if not network:
            return problems
        placeholder = set(_placeholder_images(self.images()))
        checks: list[Callable[[], list[Problem]]] = [
            (lambda i=image, p=param: self._check_image(i, p))
            for image, param in self.images().items() if image not in placeholder]
        checks += [(lambda n=name, u=uri: self._check_dataset(n, u)) for name, uri in self.datasets()]
        if self.target == "vertex":
            if self.pipeline_root and self.pipeline_root.startswith("gs://"):
                checks.append(self._check_bucket)
            if self.service_account:
                checks.append(self._check_service_account)
        start = time.monotonic()
        with _storage_limits(self.timeout_s), concurrent.futures.ThreadPoolExecutor(8) as pool:
            for found in pool.map(lambda check: check(), checks):
                problems += [p for p in found if p not in problems]
        log.info("preflight: %d check(s) in %.2f s, %d problem(s)", len(checks), time.monotonic() - start,
                 len(problems))
        return problems

    # -- credentials -------------------------------------------------------------------------
    def _credentials(self, url: str):
        if self._given_credentials is not None:
            return self._given_credentials
        if url.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials
            return AnonymousCredentials()
        with self._lock:
            if self._default_credentials is None:
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError
                from google.auth.transport.requests import Request
                try:
                    credentials, _ = google.auth.default(scopes=_SCOPES)
                    credentials.refresh(Request())  # once, before the checks share it
                except (DefaultCredentialsError, RefreshError, TransportError) as e:
                    raise _NoCredentials(str(e)) from e
                self._default_credentials = credentials
            return self._default_credentials

    def _session(self, url: str):
        from google.auth.transport.requests import AuthorizedSession
        # Refreshed once already (_credentials): a 401 is an answer to report, not a cue to refresh
        # (AnonymousCredentials cannot refresh at all).
        return AuthorizedSession(self._credentials(url), refresh_status_codes=())

    @staticmethod
    def _credentials_problem(error: _NoCredentials) -> Problem:
        return Problem("credentials", "Google credentials", (
            f"none usable ({error}); run `gcloud auth application-default login` (or set "
            f"GOOGLE_APPLICATION_CREDENTIALS to a key file), {_SKIP_HINT}"))

    # -- images ------------------------------------------------------------------------------
    def _registry_url(self, host: str) -> str:
        default = "https://registry-1.docker.io" if host == "docker.io" else f"https://{host}"
        return self.registry_endpoints.get(host, default).rstrip("/")

    def _check_image(self, image: str, parameter: Optional[str]) -> list[Problem]:
        import requests

        ref = ImageRef.parse(image)
        base = self._registry_url(ref.host)
        url = f"{base}/v2/{ref.repository}/manifests/{ref.reference}"
        headers = {"Accept": _MANIFEST_TYPES}
        google = is_google_registry(ref.host)
        try:
            with (self._session(base) if google else requests.Session()) as session:
                response = self._manifest(session, url, headers)
                if response.status_code == 401:
                    token = self._registry_token(response.headers.get("WWW-Authenticate", ""), ref)
                    if token:
                        with requests.Session() as plain:
                            response = self._manifest(plain, url, dict(headers, Authorization=f"Bearer {token}"))
        except _NoCredentials as e:
            return [self._credentials_problem(e)]
        except requests.RequestException as e:
            what = f"could not reach the registry {ref.host} ({type(e).__name__}); check the network, {_SKIP_HINT}"
            return [self._image_problem(image, parameter, what, fix=False)]
        status = response.status_code
        if status == 200:
            return []
        if status == 404:
            what = "does not exist (the registry answered 404 to a manifest request)"
        elif status == 401 and google:
            what = ("the registry refused your Google credentials (401); run `gcloud auth "
                    "application-default login`")
        elif status == 401:
            what = ("the registry refused anonymous access (401), even with its anonymous token: the "
                    "repository is private or does not exist")
        elif status == 403:
            what = ("access denied (403): the repository does not exist, or your account may not read it "
                    "(roles/artifactregistry.reader)" if google else "access denied (403)")
        else:
            what = f"unexpected answer from the registry: HTTP {status}; {_SKIP_HINT}"
            return [self._image_problem(image, parameter, what, fix=False)]
        return [self._image_problem(image, parameter, what)]

    def _manifest(self, session, url: str, headers: dict):
        response = session.head(url, headers=headers, timeout=self.timeout_s, allow_redirects=True)
        if response.status_code in (405, 501):  # registries that answer only GET
            response = session.get(url, headers=headers, timeout=self.timeout_s, allow_redirects=True)
        return response

    def _registry_token(self, challenge: str, ref: ImageRef) -> Optional[str]:
        """The anonymous token a `WWW-Authenticate: Bearer realm=...` challenge offers, or None."""
        import requests

        scheme, _, rest = challenge.partition(" ")
        fields = dict(_CHALLENGE_FIELD.findall(rest))
        if scheme.lower() != "bearer" or not fields.get("realm"):
            return None
        params = {"scope": fields.get("scope") or f"repository:{ref.repository}:pull"}
        if fields.get("service"):
            params["service"] = fields["service"]
        response = requests.get(fields["realm"], params=params, timeout=self.timeout_s)
        if response.status_code != 200:
            return None
        try:
            body = response.json()
        except ValueError:
            return None
        return body.get("token") or body.get("access_token")

    def _image_problem(self, image: str, parameter: Optional[str], what: str, fix: bool = True) -> Problem:
        blocking = self.target == "vertex"
        if parameter:
            how = (f"; pass --parameter {parameter}=IMAGE, or deploy_model=false to skip deployment (the "
                   f"deploy step runs after training)" if fix else "")
            return Problem("image", f"{image} (parameter {parameter})", what + how, blocking)
        if fix:
            rlhf = _RLHF_IMAGE.match(image)
            how = (_build_and_push(rlhf.group("registry")) if rlhf else
                   "push it, or compile with images that exist (RLHF_CPU_IMAGE / RLHF_GPU_IMAGE, "
                   "`rlhf compile --image-registry REGISTRY`)")
            what = f"{what}; {how}"
        if not blocking:
            what += " (a warning: the cluster may pull from where this machine cannot)"
        return Problem("image", image, what, blocking)

    # -- datasets and the bucket -------------------------------------------------------------
    def _check_dataset(self, name: str, uri: str) -> list[Problem]:
        from rlhf import storage
        from rlhf.errors import StorageError

        try:
            storage.expand(uri)
        except StorageError as e:
            message = str(e)
            message = message[len(uri) + 2:] if message.startswith(uri + ": ") else message
            return [Problem("dataset", f"parameter {name}={uri}", (
                f"{message}; upload the data (`gcloud storage cp FILE {uri}`) or fix the parameter"))]
        return []

    def _storage_client(self):
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return storage.Client()  # the emulator needs no credentials
        return storage.Client(project=self.project,
                              credentials=self._credentials("https://storage.googleapis.com"))

    def _check_bucket(self) -> list[Problem]:
        from google.api_core import exceptions as gexc
        from google.cloud.storage.retry import DEFAULT_RETRY

        bucket_name = self.pipeline_root[len("gs://"):].split("/", 1)[0]
        subject = f"--pipeline-root {self.pipeline_root}"
        with_timeout = getattr(DEFAULT_RETRY, "with_timeout", None) or DEFAULT_RETRY.with_deadline
        retry = with_timeout(2 * self.timeout_s)
        try:
            bucket = self._storage_client().bucket(bucket_name)
            granted = set(bucket.test_iam_permissions(list(BUCKET_PERMISSIONS), timeout=self.timeout_s,
                                                      retry=retry))
        except _NoCredentials as e:
            return [self._credentials_problem(e)]
        except gexc.NotFound:
            where = f" --location {self.location}" if self.location else ""
            project = f" --project {self.project}" if self.project else ""
            return [Problem("bucket", subject, (
                f"bucket {bucket_name} does not exist; create it: `gcloud storage buckets create "
                f"gs://{bucket_name}{project}{where} --uniform-bucket-level-access` (the Vertex SDK would "
                f"create a missing bucket silently, so a misspelt name would make a new one)"))]
        except Exception as e:  # network, 5xx after retries, 401/403
            return [Problem("bucket", subject, (
                f"could not check bucket {bucket_name} ({type(e).__name__}: {str(e)[:200]}); {_SKIP_HINT}"))]
        missing = [p for p in BUCKET_PERMISSIONS if p not in granted]
        if not missing:
            return []
        member = f"serviceAccount:{self.service_account}" if self.service_account else "MEMBER"
        return [Problem("bucket", subject, (
            f"you lack {', '.join(missing)} on bucket {bucket_name} (Cloud Storage testIamPermissions), "
            f"and the run writes its outputs there: grant roles/storage.objectUser to yourself and to the "
            f"run's service account, e.g. `gcloud storage buckets add-iam-policy-binding gs://{bucket_name} "
            f"--member={member} --role=roles/storage.objectUser`"))]

    # -- the service account -----------------------------------------------------------------
    def _check_service_account(self) -> list[Problem]:
        import requests

        email = self.service_account
        subject = f"--service-account {email}"
        name = f"{self.iam_endpoint}/v1/projects/-/serviceAccounts/{email}"
        try:
            with self._session(self.iam_endpoint) as session:
                found = session.get(name, timeout=self.timeout_s)
                if found.status_code == 404:
                    account, _, domain = email.partition("@")
                    project = domain.split(".")[0] if domain.endswith(".iam.gserviceaccount.com") else "PROJECT"
                    return [Problem("service-account", subject, (
                        f"no such service account; create it: `gcloud iam service-accounts create {account} "
                        f"--project {project}`, or pass an existing one"))]
                tested = session.post(f"{name}:testIamPermissions", json={"permissions": [ACT_AS]},
                                      timeout=self.timeout_s)
        except _NoCredentials as e:
            return [self._credentials_problem(e)]
        except requests.RequestException as e:
            return [Problem("service-account", subject, (
                f"could not reach IAM at {self.iam_endpoint} ({type(e).__name__}); {_SKIP_HINT}"))]
        if tested.status_code != 200:
            return [Problem("service-account", subject, (
                f"IAM answered HTTP {tested.status_code} to testIamPermissions: {_error_message(tested)}; "
                f"{_SKIP_HINT}"))]
        granted = set((tested.json() or {}).get("permissions") or ())
        if ACT_AS in granted:
            return []
        return [Problem("service-account", subject, (
            f"you may not act as this service account (no {ACT_AS}), so Vertex AI would refuse the run: "
            f"ask for roles/iam.serviceAccountUser on it: `gcloud iam service-accounts add-iam-policy-binding "
            f"{email} --member=user:YOUR_EMAIL --role=roles/iam.serviceAccountUser`"))]


def preflight(template: Union[str, Any], *, parameter_values: Optional[Mapping[str, Any]] = None,
              pipeline_root: Optional[str] = None, service_account: Optional[str] = None,
              project: Optional[str] = None, location: Optional[str] = None,
              target: Optional[str] = None, network: bool = True, credentials=None,
              registry_endpoints: Optional[Mapping[str, str]] = None,
              iam_endpoint: Optional[str] = None, timeout_s: float = TIMEOUT_S) -> list[Problem]:
    """Every problem found with submitting `template` (a path or `rlhf.parameters.Template`): see the
    module docstring. `parameter_values` are the checked values (defaults come from the template);
    `target` is 'vertex' or 'kfp' (default: the template's); `network=False` runs only the checks
    that need no network (the placeholder registry). Problems with `blocking=False` are warnings."""
    return Preflight(template, parameter_values=parameter_values, pipeline_root=pipeline_root,
                     service_account=service_account, project=project, location=location, target=target,
                     credentials=credentials, registry_endpoints=registry_endpoints,
                     iam_endpoint=iam_endpoint, timeout_s=timeout_s).run(network=network)


def report(problems: list[Problem]) -> Optional[str]:
    """The message `rlhf submit` refuses with, or None when nothing blocks."""
    blocking = [p for p in problems if p.blocking]
    if not blocking:
        return None
    return (f"{len(blocking)} problem(s) found before submitting; nothing was submitted:\n"
            + "\n".join(f"  - {p}" for p in blocking))


def check(problems: list[Problem]) -> None:
    """Raise one UserError listing the blocking problems (warnings are the caller's to print)."""
    message = report(problems)
    if message:
        raise UserError(message)


def _build_and_push(registry: str) -> str:
    return (f"build and push the images: `gcloud builds submit --config cloudbuild.yaml "
            f"--substitutions=_REGISTRY={registry}` (or `make push-images REGISTRY={registry}`), and compile "
            f"against that registry: `rlhf compile --image-registry {registry}` (or "
            f"RLHF_IMAGE_REGISTRY={registry} python compile.py)")


def _parse_endpoints(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, url = item.partition("=")
        if not sep or not re.match(r"^https?://", url):
            raise UserError(f"{REGISTRY_ENDPOINTS_ENV}: expected HOST=URL[,HOST=URL...] such as "
                            f"us-docker.pkg.dev=http://127.0.0.1:5000, got {item!r}")
        out[host.strip()] = url.strip()
    return out


def _error_message(response) -> str:
    try:
        return response.json()["error"]["message"]
    except Exception:
        return response.text[:200]


@contextlib.contextmanager
def _storage_limits(timeout_s: float):
    """Cloud Storage calls of the dataset checks give up after ~2 x timeout_s, not rlhf.storage's
    default 120 s of retries (unless RLHF_STORAGE_RETRY_DEADLINE / _TIMEOUT say otherwise)."""
    from rlhf import storage

    wanted = {name: value for name, value in (("retry_deadline", 2 * timeout_s), ("timeout", timeout_s))
              if not os.environ.get(f"RLHF_STORAGE_{name.upper()}")}
    previous = storage.configure(**{name: None for name in wanted})
    storage.configure(**{name: min(value, previous[name]) if previous[name] else value
                         for name, value in wanted.items()})
    try:
        yield
    finally:
        storage.configure(**previous)
