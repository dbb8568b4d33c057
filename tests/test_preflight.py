"""`rlhf.submit.preflight`: what would fail a run after machines were provisioned, found before
sending, through the real clients (requests / google-auth for the registry and IAM,
google-cloud-storage for buckets and datasets) against local stand-ins: a Docker Registry v2
stand-in, the Cloud Storage emulator (its bucket `testIamPermissions` grants everything asked, so a
fault proxy answers the denied case) and an IAM stand-in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from google.auth.credentials import Credentials

from gcs_faults import BUCKET_IAM_TEST, FaultProxy
from rlhf import __version__
from rlhf.preflight import ACT_AS, ImageRef, is_google_registry
from rlhf.submit import preflight
from standins import IamStandIn, RegistryStandIn

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = "us-central1-docker.pkg.dev/p1/rlhf"  # what the test templates are compiled against
IMAGES = {f"p1/rlhf/rlhf-{kind}:{__version__}" for kind in ("cpu", "gpu")}
SERVING = "vertex-ai/vertex-vision-model-garden-dockers/pytorch-vllm-serve:latest"  # the default, on us-docker.pkg.dev
SERVICE_ACCOUNT = "runner@p1.iam.gserviceaccount.com"


def compile_template(path, target: str = "vertex", registry: str | None = REGISTRY) -> str:
    """`rlhf compile` in a fresh process (components/image.py reads the registry at import)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RLHF_IMAGE_REGISTRY", "RLHF_CPU_IMAGE", "RLHF_GPU_IMAGE")}
    command = [sys.executable, "-m", "rlhf", "compile", "--target", target, "--output", str(path)]
    if registry:
        command += ["--image-registry", registry]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return str(path)


def registry_endpoints(url: str) -> dict[str, str]:
    """The test template's registry host and the serving image's, both served by one stand-in."""
    return {"us-central1-docker.pkg.dev": url, "us-docker.pkg.dev": url}


def upload_datasets(gcs_emulator, prefix: str) -> dict[str, str]:
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    root = prefix[len(f"gs://{gcs_emulator.bucket}/"):]
    for name in ("pref.jsonl", "prompts.jsonl", "eval/part-0.jsonl", "eval/part-1.jsonl"):
        bucket.blob(f"{root}/{name}").upload_from_string('{"x": 1}\n')
    return {"preference_dataset": f"{prefix}/pref.jsonl", "prompt_dataset": f"{prefix}/prompts.jsonl",
            "eval_dataset": f"{prefix}/eval/*.jsonl", "large_model_reference": "smollm2-135m-instruct"}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    out = tmp_path_factory.mktemp("templates")
    return {"vertex": compile_template(out / "vertex.yaml"),
            "kfp": compile_template(out / "kfp.yaml", "kfp"),
            "placeholder": compile_template(out / "placeholder.yaml", registry=None),
            "placeholder-kfp": compile_template(out / "placeholder-kfp.yaml", "kfp", registry=None)}


@pytest.fixture
def registry():
    with RegistryStandIn(images=IMAGES | {SERVING}) as standin:
        yield standin


@pytest.fixture
def iam():
    with IamStandIn({SERVICE_ACCOUNT: {ACT_AS}, "viewer@p1.iam.gserviceaccount.com": set()}) as standin:
        yield standin


@pytest.fixture
def values(gcs_emulator, gcs_prefix):
    return upload_datasets(gcs_emulator, gcs_prefix)


def _check(template, registry, iam, values, **overrides):
    args = dict(parameter_values=values, pipeline_root=f"gs://rlhf-test-bucket/runs/{uuid.uuid4().hex[:8]}",
                service_account=SERVICE_ACCOUNT, project="p1", location="us-central1",
                registry_endpoints=registry_endpoints(registry.url), iam_endpoint=iam.url)
    args.update(overrides)
    return preflight(template, **args)


class FakeToken(Credentials):
    """Google credentials holding a fixed access token (nothing to refresh, no network)."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def refresh(self, request):
        pass


def test_a_sound_submission_has_no_problem(templates, registry, iam, values, gcs_emulator):
    start = time.monotonic()
    assert _check(templates["vertex"], registry, iam, values) == []
    took = time.monotonic() - start
    print(f"preflight against the stand-ins: {took:.2f} s")
    assert took < 10
    heads = registry.requests_to("HEAD", r"/manifests/")
    assert sorted(r.path for r in heads) == sorted(
        f"/v2/{i.replace(':', '/manifests/', 1)}" for i in IMAGES | {SERVING})
    assert all("application/vnd.oci.image.index.v1+json" in r.headers["accept"]
               and "application/vnd.docker.distribution.manifest.v2+json" in r.headers["accept"] for r in heads)
    assert [r.path for r in iam.requests_to("GET", "")] == [f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}"]
    tested = iam.requests_to("POST", r":testIamPermissions$")
    assert [r.body for r in tested] == [{"permissions": [ACT_AS]}]
    # an http:// stand-in gets no Google credentials (nothing looked for them)
    assert not any("authorization" in r.headers for r in registry.requests + iam.requests)


def test_google_registries_get_the_callers_token_and_others_the_anonymous_token_dance(
        templates, iam, values):
    token = "ya29.test-token"
    with RegistryStandIn(images=IMAGES | {SERVING}, auth="token", access_tokens={token}) as google, \
            RegistryStandIn(images={"vllm/serve:1", "vllm/serve@sha256:" + "a" * 64}, auth="token") as hub:
        endpoints = dict(registry_endpoints(google.url), **{"registry.example.com": hub.url})
        for image in ("registry.example.com/vllm/serve:1", "registry.example.com/vllm/serve@sha256:" + "a" * 64):
            found = preflight(templates["vertex"], parameter_values=dict(values, serving_container_image_uri=image),
                              pipeline_root="gs://rlhf-test-bucket/runs", service_account=SERVICE_ACCOUNT,
                              credentials=FakeToken(token), registry_endpoints=endpoints, iam_endpoint=iam.url)
            assert found == []
        assert {r.headers.get("authorization") for r in google.requests} == {f"Bearer {token}"}
        assert {r.headers.get("authorization") for r in iam.requests} == {f"Bearer {token}"}
        # the other registry: asked anonymously, 401 with a Bearer challenge, an anonymous token
        # from the realm for the challenge's scope, asked again with it
        first, token_request, second = hub.requests[:3]
        assert first.method == "HEAD" and "authorization" not in first.headers
        assert token_request.path == "/token"
        assert token_request.query == {"service": ["standin-registry"], "scope": ["repository:vllm/serve:pull"]}
        assert second.headers["authorization"] == "Bearer anon:vllm/serve"
        assert hub.requests[-1].path == "/v2/vllm/serve/manifests/sha256:" + "a" * 64


def test_a_missing_image_names_it_with_the_commands_that_build_and_push_it(templates, iam, values):
    with RegistryStandIn(images={f"p1/rlhf/rlhf-cpu:{__version__}", SERVING}) as registry:
        problems = _check(templates["vertex"], registry, iam, values)
    assert len(problems) == 1
    problem = problems[0]
    assert problem.check == "image" and problem.blocking
    assert problem.subject == f"{REGISTRY}/rlhf-gpu:{__version__}"
    assert "does not exist" in problem.message
    assert f"gcloud builds submit --config cloudbuild.yaml --substitutions=_REGISTRY={REGISTRY}" in problem.message
    assert f"make push-images REGISTRY={REGISTRY}" in problem.message
    assert f"rlhf compile --image-registry {REGISTRY}" in problem.message


def test_a_private_or_missing_repository_is_refused_after_the_token_dance(templates, iam, values):
    with RegistryStandIn(images=IMAGES | {SERVING}) as registry, \
            RegistryStandIn(images={"acme/serve:1"}, auth="token", public=set()) as private:
        endpoints = dict(registry_endpoints(registry.url), **{"registry.example.com": private.url})
        problems = _check(templates["vertex"], registry, iam,
                          dict(values, serving_container_image_uri="registry.example.com/acme/serve:1"),
                          registry_endpoints=endpoints)
        assert [p.subject for p in problems] == [
            "registry.example.com/acme/serve:1 (parameter serving_container_image_uri)"]
        assert "refused anonymous access (401)" in problems[0].message
        assert "deploy_model=false" in problems[0].message
        assert [r.path for r in private.requests] == ["/v2/acme/serve/manifests/1", "/token",
                                                      "/v2/acme/serve/manifests/1"]
        # no deployment: the serving image is not needed, so not checked
        assert _check(templates["vertex"], registry, iam,
                      dict(values, serving_container_image_uri="registry.example.com/acme/serve:1",
                           deploy_model=False), registry_endpoints=endpoints) == []


def test_an_unreachable_registry_says_so_and_how_to_skip(templates, iam, values):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    problems = preflight(templates["vertex"], parameter_values=values, registry_endpoints=registry_endpoints(closed),
                         iam_endpoint=iam.url)
    assert {p.subject for p in problems} == {f"{REGISTRY}/rlhf-cpu:{__version__}", f"{REGISTRY}/rlhf-gpu:{__version__}",
                                             f"us-docker.pkg.dev/{SERVING} (parameter serving_container_image_uri)"}
    assert all("could not reach the registry" in p.message and "--skip-preflight" in p.message for p in problems)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt and name lookup fails, and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_the_placeholder_registry_is_refused_with_no_network_at_all(templates, no_network):
    from components.image import DEFAULT_REGISTRY

    problems = preflight(templates["placeholder"], parameter_values={}, project="p1", location="europe-west4",
                         network=False)
    assert len(problems) == 1 and problems[0].blocking
    message = problems[0].message
    assert DEFAULT_REGISTRY in message and f"{DEFAULT_REGISTRY}/rlhf-gpu:{__version__}" in problems[0].subject
    suggested = "europe-west4-docker.pkg.dev/p1/rlhf"
    assert f"gcloud builds submit --config cloudbuild.yaml --substitutions=_REGISTRY={suggested}" in message
    assert f"make push-images REGISTRY={suggested}" in message
    assert f"rlhf compile --image-registry {suggested}" in message and "RLHF_IMAGE_REGISTRY" in message
    # on a Kubeflow cluster the images may have been loaded into the nodes (kind load): a warning
    kfp = preflight(templates["placeholder-kfp"], parameter_values={}, network=False)
    assert len(kfp) == 1 and not kfp[0].blocking and "kind load" in kfp[0].message
    assert no_network == []


def test_datasets_must_match_an_object(templates, registry, iam, values, gcs_prefix):
    bad = dict(values, preference_dataset=f"{gcs_prefix}/prefs.jsonl",  # misspelt
               prompt_dataset=f"{gcs_prefix}/prompts/*.jsonl",          # a glob matching nothing
               eval_dataset="gs://no-such-bucket-rlhf/eval.jsonl")
    problems = _check(templates["vertex"], registry, iam, bad)
    by_subject = {p.subject: p.message for p in problems}
    assert set(by_subject) == {f"parameter preference_dataset={gcs_prefix}/prefs.jsonl",
                               f"parameter prompt_dataset={gcs_prefix}/prompts/*.jsonl",
                               "parameter eval_dataset=gs://no-such-bucket-rlhf/eval.jsonl"}
    assert "no such object" in by_subject[f"parameter preference_dataset={gcs_prefix}/prefs.jsonl"]
    assert "pref.jsonl" in by_subject[f"parameter preference_dataset={gcs_prefix}/prefs.jsonl"]  # what is there
    assert "matches no object" in by_subject[f"parameter prompt_dataset={gcs_prefix}/prompts/*.jsonl"]
    assert "bucket no-such-bucket-rlhf does not exist" in by_subject[
        "parameter eval_dataset=gs://no-such-bucket-rlhf/eval.jsonl"]
    assert all("gcloud storage cp" in m for m in by_subject.values())


def test_the_pipeline_root_bucket_must_exist_and_be_writable(templates, registry, iam, values, gcs_emulator,
                                                             monkeypatch):
    missing = _check(templates["vertex"], registry, iam, values, pipeline_root="gs://no-such-root-bucket/runs")
    assert [p.check for p in missing] == ["bucket"]
    assert ("gcloud storage buckets create gs://no-such-root-bucket --project p1 --location us-central1"
            in missing[0].message)
    # The emulator's testIamPermissions grants whatever is asked: a proxy answers "read only".
    with FaultProxy(gcs_emulator.host) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.host)
        proxy.answer({"kind": "storage#testIamPermissionsResponse", "permissions": ["storage.objects.get"]},
                     method="GET", path=BUCKET_IAM_TEST)
        denied = _check(templates["vertex"], registry, iam, values)
        asked = proxy.requests("GET", BUCKET_IAM_TEST)
    assert len(asked) == 1 and "permissions=storage.objects.create" in asked[0].path
    assert [p.check for p in denied] == ["bucket"]
    assert "you lack storage.objects.create on bucket rlhf-test-bucket" in denied[0].message
    assert f"--member=serviceAccount:{SERVICE_ACCOUNT} --role=roles/storage.objectUser" in denied[0].message


def test_the_service_account_must_exist_and_the_submitter_act_as_it(templates, registry, iam, values):
    nobody = "nobody@p1.iam.gserviceaccount.com"
    problems = _check(templates["vertex"], registry, iam, values, service_account=nobody)
    assert [p.subject for p in problems] == [f"--service-account {nobody}"]
    assert "no such service account" in problems[0].message
    assert "gcloud iam service-accounts create nobody --project p1" in problems[0].message

    viewer = "viewer@p1.iam.gserviceaccount.com"
    problems = _check(templates["vertex"], registry, iam, values, service_account=viewer)
    assert [p.check for p in problems] == ["service-account"]
    assert "roles/iam.serviceAccountUser" in problems[0].message and ACT_AS in problems[0].message
    assert iam.requests_to("POST", rf"/{viewer}:testIamPermissions$")


def test_kfp_warns_about_images_checks_datasets_and_skips_iam(templates, iam, values, gcs_prefix):
    with RegistryStandIn(images=set()) as empty:
        problems = preflight(templates["kfp"], parameter_values=dict(values, prompt_dataset=f"{gcs_prefix}/none.jsonl"),
                             pipeline_root="gs://no-such-root-bucket/runs", service_account="default",
                             registry_endpoints=registry_endpoints(empty.url), iam_endpoint=iam.url)
        assert len(empty.requests_to("HEAD", "/manifests/")) == 2  # no serving image on a cluster
    images = [p for p in problems if p.check == "image"]
    assert len(images) == 2 and not any(p.blocking for p in images)
    assert [p.subject for p in problems if p.blocking] == [f"parameter prompt_dataset={gcs_prefix}/none.jsonl"]
    assert iam.requests == []  # no IAM and no bucket check for a Kubeflow cluster


def test_image_references_and_google_hosts():
    assert ImageRef.parse("python:3.11") == ImageRef("docker.io", "library/python", "3.11")
    assert ImageRef.parse("acme/serve") == ImageRef("docker.io", "acme/serve", "latest")
    assert ImageRef.parse("localhost:5000/a/b@sha256:ab") == ImageRef("localhost:5000", "a/b", "sha256:ab")
    assert ImageRef.parse(f"{REGISTRY}/rlhf-cpu:0.1.0") == ImageRef(
        "us-central1-docker.pkg.dev", "p1/rlhf/rlhf-cpu", "0.1.0")
    assert [is_google_registry(h) for h in ("us-docker.pkg.dev", "gcr.io", "eu.gcr.io", "docker.io",
                                            "ghcr.io", "registry.example.com")] == [True, True, True, False,
                                                                                   False, False]
