"""Credentials a task needs at run time, read from the environment or Secret Manager.

A model-hub token comes from ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) when set; otherwise, when
``RLHF_HUB_TOKEN_SECRET`` names a Secret Manager secret version (``rlhf compile
--hub-token-secret`` puts the *name* into the tasks that load models), from that secret, read with
the task's own service account. The token is fetched only when a model is actually downloaded from
a hub, held in memory only, and never logged or put into an error message.

Secret Manager is reached over its REST API with google-auth, which google-cloud-storage already
brings, rather than one more client library for a single GET. ``RLHF_SECRET_MANAGER_ENDPOINT``
points it elsewhere (a private endpoint; an ``http://`` stand-in in tests, reached without
credentials).
"""

from __future__ import annotations

import base64
import os
import re
import time
from typing import Optional

from rlhf.errors import UserError

HUB_TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
HUB_TOKEN_SECRET_ENV = "RLHF_HUB_TOKEN_SECRET"
ENDPOINT_ENV = "RLHF_SECRET_MANAGER_ENDPOINT"
DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"

SECRET_VERSION_PATTERN = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")

_RETRIED_STATUSES = {429, 500, 502, 503, 504}
_ATTEMPTS = 4


def hub_token() -> Optional[str]:
    """The model-hub token for this process, or None when none is configured."""
    for name in HUB_TOKEN_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    secret = os.environ.get(HUB_TOKEN_SECRET_ENV, "").strip()
    return access_secret(secret, purpose=HUB_TOKEN_SECRET_ENV) if secret else None


def check_secret_version_name(name: str, what: str) -> None:
    if not SECRET_VERSION_PATTERN.match(name):
        # The message never repeats the value: it may be a token pasted in by mistake.
        raise UserError(f"{what}: expected a Secret Manager secret version name, "
                        f"projects/PROJECT/secrets/NAME/versions/VERSION (a name, never the token itself)")


def access_secret(name: str, purpose: str = "secret") -> str:
    """The payload of Secret Manager secret version ``name`` as text (surrounding whitespace dropped)."""
    check_secret_version_name(name, purpose)
    endpoint = (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/v1/{name}:access"
    session = _session(endpoint)
    for attempt in range(_ATTEMPTS):
        try:
            response = session.get(url, timeout=30)
        except Exception as e:  # connection refused, DNS, timeout: retried, then the user's to fix
            if attempt + 1 < _ATTEMPTS:
                time.sleep(2 ** attempt)
                continue
            raise UserError(f"{purpose}: could not reach Secret Manager at {endpoint} to read {name}: "
                            f"{type(e).__name__}") from None
        if response.status_code in _RETRIED_STATUSES and attempt + 1 < _ATTEMPTS:
            time.sleep(2 ** attempt)
            continue
        break
    if response.status_code in (401, 403):
        raise UserError(f"{purpose}: permission denied reading {name} (HTTP {response.status_code}): grant the "
                        f"pipeline's service account roles/secretmanager.secretAccessor on the secret")
    if response.status_code == 404:
        raise UserError(f"{purpose}: Secret Manager has no secret version {name}: create it with `gcloud "
                        f"secrets create` / `gcloud secrets versions add`, or fix the name")
    if response.status_code != 200:
        raise UserError(f"{purpose}: Secret Manager answered HTTP {response.status_code} for {name}")
    try:
        payload = base64.b64decode(response.json()["payload"]["data"]).decode("utf-8").strip()
    except Exception:
        raise UserError(f"{purpose}: Secret Manager's answer for {name} holds no readable text payload") from None
    if not payload:
        raise UserError(f"{purpose}: secret version {name} is empty")
    return payload


def _session(endpoint: str):
    if endpoint.startswith("http://"):  # a local stand-in: plain HTTP carries no credentials
        import requests
        return requests.Session()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.auth.transport.requests import AuthorizedSession
    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError:
        raise UserError("reading a Secret Manager secret needs Google credentials: run `gcloud auth "
                        "application-default login`, or run on Google Cloud with a service account") from None
    return AuthorizedSession(credentials)
