"""The CPU image, for real: components run inside it through KFP's own executor, and so does the
whole compiled Kubeflow template (every stage's entrypoint, arguments and artifact paths in the
image a cluster pulls).

The image is built by `.ci/container_test.sh` (or `make test-container`) with podman; these tests
then use kfp.local's DockerRunner against podman's Docker-compatible socket, exactly as a user runs
the pipeline's containers locally, and check the outputs on the host. They need podman and the
image, and fail (never skip) without them; deselect them with `pytest -m "not container"`.

Environment: RLHF_TEST_IMAGE (default localhost/rlhf-cpu:test); DOCKER_HOST to use a running
Docker-compatible API (else a `podman system service` is started here).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from rlhf import __version__, samples
from rlhf.data.validate import ValidateConfig, ValidationOutputs, run_validation

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("RLHF_TEST_IMAGE", "localhost/rlhf-cpu:test")
HOW = ("run .ci/container_test.sh (as root on Debian it installs podman and builds the image) or "
       "`make test-container`; deselect these tests with -m 'not container'")


def _podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail(f"podman is not installed, so the container image cannot be tested: {HOW}")
    if _podman("image", "exists", IMAGE).returncode != 0:
        pytest.fail(f"image {IMAGE} does not exist: {HOW} (or set RLHF_TEST_IMAGE)")
    return IMAGE


@pytest.fixture(scope="module")
def docker_host(image, tmp_path_factory):
    """A Docker-compatible API for kfp's DockerRunner: $DOCKER_HOST, else podman's own service."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            pytest.fail(f"podman system service did not start: {service.communicate()[1][-2000:]}")
        time.sleep(0.2)
    try:
        yield f"unix://{sock}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def _exit_codes(image: str, since: float) -> list[int]:
    """Exit codes of the containers of `image` that ended since `since`, from podman's event log.

    kfp's DockerRunner cannot be trusted with them: when the container is removed (it runs them with
    auto_remove) before it reads the exit code, it assumes 0 (kfp/local/docker_task_handler.py), and
    podman 4.3's Docker-compatible API always loses that race, so a failed task reads SUCCESS."""
    done = _podman("events", "--stream=false", "--since", f"{since:.3f}", "--filter", "event=died",
                   "--format", "{{.Image}} {{.ContainerExitCode}}", timeout=60)
    assert done.returncode == 0, done.stderr
    # (podman 4.3's `--filter image=` matches nothing, so the image is picked here.)
    return [int(code) for name, code in (line.rsplit(" ", 1) for line in done.stdout.splitlines())
            if name == image]


def _run_in_kfp(code: str, tmp_path: Path, docker_host: str, image: str) -> subprocess.CompletedProcess:
    """Run `code` after kfp.local.init(DockerRunner) in a fresh interpreter: components.image reads
    RLHF_CPU_IMAGE when it is first imported, so the component's base_image is the image under test."""
    prelude = textwrap.dedent(f"""
        import functools, inspect, json, kfp.local
        from components.validate import validate_inputs_for
        from pipelines.rlhf_pipeline import build_pipeline
        from pipelines.stages import VERTEX_PLACEHOLDER_PARAMETERS
        # The pipeline's first task, with every parameter at its default (a call may override them).
        signature = inspect.signature(build_pipeline("kfp").pipeline_func).parameters
        checked = {{n: p for n, p in signature.items() if n not in VERTEX_PLACEHOLDER_PARAMETERS}}
        defaults = {{n: p.default for n, p in checked.items() if p.default not in (inspect.Parameter.empty, None)}}
        validate_inputs = functools.partial(validate_inputs_for(checked, "kfp", launches_jobs=False),
                                            **{{**defaults, "prompt_dataset": "", "large_model_reference": ""}})
        # podman 4.3's Docker API answers 500 "no such container", not Docker's 404, when a task's
        # container is gone (auto-removed) before kfp reads its log: a quick task (a second or two)
        # then crashes kfp's runner instead of reaching its NotFound handling. Map it to NotFound;
        # exit codes come from podman's event log (_exit_codes), which kfp then cannot see anyway.
        import docker.api.client, docker.errors
        _raise_for_status = docker.api.client.APIClient._raise_for_status
        def _gone_is_not_found(self, response):
            try:
                _raise_for_status(self, response)
            except docker.errors.APIError as e:
                if e.response is not None and e.response.status_code == 500 and "no such container" in str(e):
                    raise docker.errors.NotFound(str(e), response=e.response) from e
                raise
        docker.api.client.APIClient._raise_for_status = _gone_is_not_found
        # No network in the container: the image alone must hold everything a step needs.
        kfp.local.init(runner=kfp.local.DockerRunner(network_mode="none"),
                       pipeline_root={str(tmp_path / "root")!r})
    """)
    env = dict(os.environ, RLHF_CPU_IMAGE=image, DOCKER_HOST=docker_host, TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    # The pipeline root is bind-mounted into the container, whose user (uid 1000) writes the outputs.
    path = tmp_path / "root"
    path.mkdir()
    path.chmod(0o777)
    return path


def test_image_is_pinned_non_root_and_holds_the_default_model(image):
    probe = textwrap.dedent("""
        import hashlib, importlib, json, os, shutil, sys
        from pathlib import Path
        from importlib import metadata
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from rlhf import __version__, models
        path = models.resolve_model()
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        print(json.dumps({
            "uid": os.getuid(), "version": __version__, "model_path": path,
            "cache": os.environ["RLHF_CACHE"], "cuda": torch.version.cuda,
            "answer": tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True),
            "dists": {d.metadata["Name"].lower().replace("_", "-"): d.version
                      for d in metadata.distributions()},
            "pip_cache": os.path.exists(os.path.expanduser("~/.cache/pip")),
            "code": {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                     for pkg in ("rlhf", "components", "pipelines")
                     for root in [Path(importlib.import_module(pkg).__file__).parent.parent]
                     for p in sorted((root / pkg).rglob("*")) if p.suffix in (".py", ".jsonl")},
            "compilers": [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)],
        }))
    """)
    done = _podman("run", "--rm", "--network", "none", image, "python3", "-c", probe)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    assert got["uid"] != 0, "the image must run as a non-root user"
    assert got["version"] == __version__, "the image was built from another version of the code"
    tree = {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pkg in ("rlhf", "components", "pipelines")
            for p in sorted((REPO / pkg).rglob("*")) if p.suffix in (".py", ".jsonl")}
    stale = sorted({name for name, _ in set(tree.items()) ^ set(got["code"].items())})
    assert not stale, f"the image holds other code than this tree (rebuild it): {stale[:10]}"
    # The default model was converted at build time: it resolves offline, from the image's cache,
    # and it is the real SmolLM2 (a random or broken checkpoint would not know this).
    assert got["model_path"] == f"{got['cache']}/models/smollm2-135m-instruct"
    assert "paris" in got["answer"].lower(), got["answer"]
    assert got["cuda"] is None, "the CPU image must carry the CPU build of torch"
    assert not got["pip_cache"] and not got["compilers"]

    # Exactly the pinned versions, and nothing unpinned besides torch, pip and the project.
    pins = dict(line.split("==") for line in (REPO / "containers" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    dists = got["dists"]
    wrong = {n: (v, dists.get(n)) for n, v in pins.items() if dists.get(n) != v}
    assert not wrong, f"(pinned, installed) differ: {wrong}"
    assert set(dists) - set(pins) == {"torch", "pip", "rlhf-pipeline"}

    # Kubernetes may run the image as any uid: the baked model must still be readable.
    other = _podman("run", "--rm", "--network", "none", "--user", "4242:4242", image, "python3", "-c",
                    "from rlhf import models; p = models.resolve_model(); "
                    "print(p, len(open(p + '/model.safetensors', 'rb').read(1 << 20)))")
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.stdout.split() == [got["model_path"], str(1 << 20)]


def test_validation_component_runs_in_the_image(image, docker_host, root, tmp_path):
    data = root / "data"
    data.mkdir()
    inputs = {}
    for kind, src in (("preference", samples.preference_dataset()), ("prompt", samples.prompt_dataset()),
                      ("eval", samples.eval_dataset())):
        inputs[kind] = str(shutil.copy(src, data / Path(src).name))

    start = time.time()
    done = _run_in_kfp(f"""
        task = validate_inputs(preference_dataset={inputs["preference"]!r},
                               prompt_dataset={inputs["prompt"]!r}, eval_dataset={inputs["eval"]!r},
                               instruction={samples.INSTRUCTION!r}, large_model_reference="smollm2-135m-instruct")
        print(json.dumps({{name: {{"path": a.path, "metadata": a.metadata}}
                          for name, a in task.outputs.items() if hasattr(a, "path")}}))
    """, tmp_path, docker_host, image)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Found image '{image}'" in done.stdout, "the task did not run in the image under test"
    assert _exit_codes(image, start) == [0]
    outputs = json.loads(done.stdout.strip().splitlines()[-1])

    # The same validation on the host, as the reference for what the container wrote.
    expected = tmp_path / "host"
    config = ValidateConfig(preference_dataset=inputs["preference"], prompt_dataset=inputs["prompt"],
                            eval_dataset=inputs["eval"], instruction=samples.INSTRUCTION,
                            tokenizer="smollm2-135m-instruct")
    report = run_validation(config, ValidationOutputs.in_dir(str(expected)))
    assert report.ok and report.outputs is not None
    for name, host_path in (("preference_data", report.outputs.preference),
                            ("prompt_data", report.outputs.prompts), ("eval_data", report.outputs.eval)):
        written = Path(outputs[name]["path"])
        assert written.read_bytes() == Path(host_path).read_bytes(), f"{name} differs from the host's"
        assert written.stat().st_size > 0
        assert written.stat().st_uid != 0, "the component ran as root in the container"
    assert json.loads(Path(outputs["stats"]["path"]).read_text()) == report.stats
    assert outputs["metrics"]["metadata"] == pytest.approx(report.metrics)
    assert report.stats["datasets"]["preference"]  # token statistics need the baked tokenizer
    assert Path(outputs["summary"]["path"]).read_text().strip()


def test_invalid_data_fails_the_task_and_writes_nothing(image, docker_host, root, tmp_path):
    bad = root / "bad.jsonl"
    good = {"input_text": "A post about a lost cat.", "candidate_0": "Cat lost.", "candidate_1": "A cat."}
    bad.write_text(json.dumps({**good, "choice": 0}) + "\n" + json.dumps({**good, "choice": "1"}) + "\n")

    start = time.time()
    done = _run_in_kfp(f"""
        task = validate_inputs(preference_dataset={str(bad)!r})
        print(json.dumps({{name: a.path for name, a in task.outputs.items() if hasattr(a, "path")}}))
    """, tmp_path, docker_host, image)
    log = done.stdout + done.stderr
    assert f"Found image '{image}'" in log
    # The executor in the container failed and left no outputs. kfp then reports the task as FAILED
    # under Docker, and as SUCCESS with no outputs under podman 4.3 (see _exit_codes), whose
    # streamed log of the removed container may also be cut short: the message is checked below.
    assert _exit_codes(image, start) == [2], log[-3000:]  # a user's mistake: its message, exit 2
    if done.returncode == 0:
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {}, log[-3000:]
    task_dirs = list(root.glob("validate-inputs-*/validate-inputs"))
    assert task_dirs and not [p for d in task_dirs for p in d.rglob("*") if p.is_file()]

    # The same data through the image's CLI: exit 2, the problem as URI:LINE, no traceback.
    cli = _podman("run", "--rm", "--network", "none", "-v", f"{root}:{root}:ro", image,
                  "rlhf", "validate", "--preference-dataset", str(bad))
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert f"{bad}:2:" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr


# -- the whole compiled Kubeflow template, task by task in the image ----------------------------------

TINY_STEPS = {  # every stage, a step or two on the image's own SmolLM2-135M
    "supervised_tuning": "preferred_candidates", "sft_options": {"sft_train_steps": 1, "batch_size": 2},
    "prompt_sequence_length": 64, "target_sequence_length": 8,
    "reward_model_train_steps": 1, "reward_model_batch_size": 2, "reward_model_options": {"normalization_pairs": 4},
    "reinforcement_learning_train_steps": 1, "reinforcement_learning_batch_size": 2,
    "reinforcement_learning_options": {"mini_batch_size": 2, "ppo_epochs": 1},
    "evaluation_batch_size": 2, "evaluation_max_examples": 2,
}


def test_the_compiled_kubeflow_template_runs_end_to_end_in_the_image(image, docker_host, root, tmp_path):
    """`rlhf compile --target kfp` with this image for both kinds of task, loaded back and run by
    kfp's DockerRunner: validation, labels, SFT, the reward model, PPO, evaluation and the skipped
    deployment each run their own entrypoint in the container, on artifacts the previous one wrote."""
    data = root / "data"
    data.mkdir()
    datasets = {}  # the first rows of the bundled data: the wiring is under test, not the learning
    for kind, src, rows in (("preference", samples.preference_dataset(), 40), ("prompt", samples.prompt_dataset(), 8),
                            ("eval", samples.eval_dataset(), 4)):
        head = Path(src).read_text().splitlines(keepends=True)[:rows]
        datasets[f"{kind}_dataset"] = str(data / Path(src).name)
        Path(datasets[f"{kind}_dataset"]).write_text("".join(head))
    template = tmp_path / "kfp.yaml"
    env = dict(os.environ, RLHF_CPU_IMAGE=image, RLHF_GPU_IMAGE=image)
    compiled = subprocess.run([sys.executable, "-m", "rlhf", "compile", "--target", "kfp", "--output", str(template)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert compiled.returncode == 0, compiled.stderr
    images = {e["container"]["image"] for e in yaml.safe_load(template.read_text())["deploymentSpec"]["executors"].values()}
    assert images == {image}

    start = time.time()
    done = _run_in_kfp(f"""
        from kfp import components
        from rlhf.parameters import load_template
        template = load_template({str(template)!r})
        values = {{n: p.default for n, p in template.parameters.items() if p.has_default}}
        values.update({{n: "" for n, p in template.parameters.items() if p.optional and not p.has_default}})
        values.update({json.dumps({**datasets, **TINY_STEPS, "instruction": samples.INSTRUCTION,
                                   "large_model_reference": "smollm2-135m-instruct"})})
        run = components.load_component_from_file({str(template)!r})(**values)
        print(json.dumps(dict(run.outputs)))
    """, tmp_path, docker_host, image)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    codes = _exit_codes(image, start)
    assert codes and set(codes) == {0}, (codes, log[-3000:])  # podman's own record of every task
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"model_resource_name": "", "endpoint_resource_name": ""}
    [run_dir] = [p for p in root.iterdir() if p.name.startswith("rlhf-train-template-")]
    ran = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert ran == ["ai-feedback-labels", "deployment-skipped", "evaluate-model", "supervised-fine-tuning",
                   "train-reward-model", "tune-policy", "validate-inputs"], ran
    sft_model = run_dir / "supervised-fine-tuning" / "sft_model"
    adapter = run_dir / "tune-policy" / "policy_adapter"
    assert (sft_model / "config.json").exists() and (adapter / "adapter_config.json").exists()
    # the later stages started from the SFT model the image wrote (the OneOf of the SFT condition)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft_model)
    assert (run_dir / "train-reward-model" / "reward_model" / "adapter_model.safetensors").exists()
    summary = (run_dir / "evaluate-model" / "summary").read_text()
    assert "tuned vs SFT vs base" in summary
    assert len((run_dir / "ai-feedback-labels" / "preference_data").read_text().splitlines()) == \
        len((run_dir / "validate-inputs" / "preference_data").read_text().splitlines()) > 0
