"""Compiling the pipeline: `python compile.py` and `rlhf compile` for both targets, checked against a
golden summary (parameters and defaults, task graph, resources, images); Google parameter
compatibility; image overrides; no secrets in the YAML; a well-formed graph."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # UPDATE_GOLDEN=1 pytest tests/test_compile.py rewrites them

# google-cloud-pipeline-components 2.22.0, preview/llm/rlhf/component.py, rlhf_pipeline's signature:
# (name, KFP type, default; None: no default and optional; REQUIRED: no default).
REQUIRED = object()
GOOGLE_PARAMETERS = [
    ("prompt_dataset", "STRING", REQUIRED),
    ("preference_dataset", "STRING", REQUIRED),
    ("large_model_reference", "STRING", REQUIRED),
    ("model_display_name", "STRING", None),
    ("prompt_sequence_length", "NUMBER_INTEGER", 512),
    ("target_sequence_length", "NUMBER_INTEGER", 64),
    ("reward_model_learning_rate_multiplier", "NUMBER_DOUBLE", 1.0),
    ("reinforcement_learning_rate_multiplier", "NUMBER_DOUBLE", 1.0),
    ("reward_model_train_steps", "NUMBER_INTEGER", 1000),
    ("reinforcement_learning_train_steps", "NUMBER_INTEGER", 1000),
    ("kl_coeff", "NUMBER_DOUBLE", 0.1),
    ("instruction", "STRING", None),
    ("deploy_model", "BOOLEAN", True),
    ("eval_dataset", "STRING", None),
    ("project", "STRING", "{{$.pipeline_google_cloud_project_id}}"),
    ("accelerator_type", "STRING", "GPU"),
    ("location", "STRING", "{{$.pipeline_google_cloud_location}}"),
    ("encryption_spec_key_name", "STRING", ""),
    ("tensorboard_resource_id", "STRING", ""),
]
GOOGLE_OUTPUTS = {"model_resource_name": "STRING", "endpoint_resource_name": "STRING"}


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_") or k == "RLHF_CACHE"}
    env.update(extra)
    return env


def _compile(tmp_path, target, *extra, cli="compile.py", env=None) -> dict:
    out = tmp_path / f"{target}.yaml"
    command = ([sys.executable, "compile.py"] if cli == "compile.py"
               else [sys.executable, "-m", "rlhf", "compile"])
    done = subprocess.run(command + ["--target", target, "--output", str(out), *extra], cwd=ROOT,
                          env=env or _clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compiled")
    return {"vertex": _compile(tmp, "vertex"), "kfp": _compile(tmp, "kfp", cli="rlhf"),
            **{operator: _compile(tmp, "kfp", "--training-operator", operator) for operator in ("trainjob", "pytorchjob")}}


def summarize(spec: dict) -> dict:
    """What the golden file pins: parameters, outputs, every DAG's tasks and every executor, keyed by
    the path of tasks from the root: kfp numbers the copies of a sub-pipeline called in several
    branches (`comp-evaluate-model-2-2`) in an order that changes from one compile to the next."""
    components = spec["components"]
    graphs, executors = {}, {}

    def walk(path: str, component: dict) -> None:
        tasks = {}
        for task_name, task in sorted(component["dag"].get("tasks", {}).items()):
            inputs = task.get("inputs", {})
            ref = components[task["componentRef"]["name"]]
            tasks[task_name] = {
                "component": re.sub(r"(-[0-9]+)+$", "", task["componentRef"]["name"]),
                "display_name": task.get("taskInfo", {}).get("name"),
                "after": sorted(task.get("dependentTasks", [])),
                "condition": task.get("triggerPolicy", {}).get("condition"),
                "caching": task.get("cachingOptions", {}).get("enableCache", False),
                "parameters": {k: _source(v) for k, v in sorted(inputs.get("parameters", {}).items())},
                "artifacts": {k: _source(v) for k, v in sorted(inputs.get("artifacts", {}).items())},
            }
            if "dag" in ref:
                walk(f"{path}/{task_name}", ref)
            else:
                container = spec["deploymentSpec"]["executors"][ref["executorLabel"]]["container"]
                executors[f"{path}/{task_name}"] = {
                    "image": container["image"], "resources": container.get("resources", {}),
                    "env": sorted(e["name"] for e in container.get("env", []))}
        graphs[path] = {"inputs": sorted(component.get("inputDefinitions", {}).get("parameters", {})),
                        "tasks": tasks}

    root = spec["root"]
    walk("root", root)
    parameters = {name: {"type": p["parameterType"], "default": p.get("defaultValue"),
                         "optional": p.get("isOptional", False)}
                  for name, p in sorted(root["inputDefinitions"]["parameters"].items())}
    return {"pipeline": spec["pipelineInfo"], "parameters": parameters,
            "outputs": {k: v["parameterType"] for k, v in root["outputDefinitions"]["parameters"].items()},
            "graphs": graphs, "executors": executors}


def _source(value: dict) -> str:
    if "componentInputParameter" in value:
        return f"input:{value['componentInputParameter']}"
    if "componentInputArtifact" in value:
        return f"input:{value['componentInputArtifact']}"
    if "taskOutputParameter" in value:
        o = value["taskOutputParameter"]
        return f"task:{o['producerTask']}.{o['outputParameterKey']}"
    if "taskOutputArtifact" in value:
        o = value["taskOutputArtifact"]
        return f"task:{o['producerTask']}.{o['outputArtifactKey']}"
    if "runtimeValue" in value:
        return f"constant:{json.dumps(value['runtimeValue'].get('constant'))}"
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_compiled_pipeline_matches_the_golden_summary(compiled, target):
    summary = summarize(compiled[target])
    golden = GOLDEN / f"pipeline-{target}.json"
    if UPDATE or not golden.exists():
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        if not UPDATE:
            pytest.fail(f"wrote the missing golden file {golden}; check it in and rerun")
    expected = json.loads(golden.read_text())
    assert summary == expected, (f"the compiled {target} pipeline changed; if on purpose, rerun with "
                                 f"UPDATE_GOLDEN=1 and review the diff of {golden}")


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_parameters_are_a_superset_of_googles_with_the_same_types_and_defaults(compiled, target):
    declared = compiled[target]["root"]["inputDefinitions"]["parameters"]
    for name, kind, default in GOOGLE_PARAMETERS:
        assert name in declared, name
        assert declared[name]["parameterType"] == kind, name
        if default is REQUIRED:
            assert "defaultValue" not in declared[name] and not declared[name].get("isOptional"), name
        elif default is None:
            assert "defaultValue" not in declared[name] and declared[name]["isOptional"], name
        else:
            assert declared[name]["defaultValue"] == default, name
    outputs = compiled[target]["root"]["outputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in outputs.items()} == GOOGLE_OUTPUTS
    assert compiled[target]["pipelineInfo"]["name"] == "rlhf-train-template"
    # ours come after Google's, each with a default so the Vertex run form shows it editable
    ours = set(declared) - {name for name, _, _ in GOOGLE_PARAMETERS}
    assert ours
    assert all("defaultValue" in declared[name] for name in ours), sorted(
        n for n in ours if "defaultValue" not in declared[n])


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_every_parameter_is_described_in_the_compiled_yaml(compiled, target):
    """The docstring's Args become descriptions: the Vertex run form and the README table show them."""
    declared = compiled[target]["root"]["inputDefinitions"]["parameters"]
    undocumented = sorted(name for name, p in declared.items() if len(p.get("description", "")) < 10)
    assert not undocumented


def _placeholders(value) -> set[str]:
    return set(re.findall(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}", json.dumps(value)))


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_every_reference_in_the_graph_resolves(compiled, target):
    """Guards against two kfp 2.17 compiler traps: a parameter used only in a resource setting
    inside a dsl.If (dropped from the group's inputs) and condition groups of a sub-pipeline and
    its parent sharing a name (one overwrites the other)."""
    spec = compiled[target]
    components = spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    for name, component in [("root", spec["root"]), *components.items()]:
        dag = component.get("dag")
        if not dag:
            continue
        params = set(component.get("inputDefinitions", {}).get("parameters", {}))
        artifacts = set(component.get("inputDefinitions", {}).get("artifacts", {}))
        for task_name, task in dag.get("tasks", {}).items():
            inputs = task.get("inputs", {})
            for key, value in inputs.get("parameters", {}).items():
                if "componentInputParameter" in value:
                    assert value["componentInputParameter"] in params, (name, task_name, key)
            for key, value in inputs.get("artifacts", {}).items():
                if "componentInputArtifact" in value:
                    assert value["componentInputArtifact"] in artifacts, (name, task_name, key)
            for key, value in {**inputs.get("parameters", {}), **inputs.get("artifacts", {})}.items():
                for kind in ("taskOutputParameter", "taskOutputArtifact"):
                    if kind in value:
                        assert value[kind]["producerTask"] in dag["tasks"], (name, task_name, key)
            ref = components[task["componentRef"]["name"]]
            executor = executors.get(ref.get("executorLabel", ""), {})
            for placeholder in _placeholders(executor.get("container", {}).get("resources", {})):
                assert placeholder in inputs.get("parameters", {}), (name, task_name, placeholder)
            condition = task.get("triggerPolicy", {}).get("condition", "")
            for channel in re.findall(r"parameter_values\['([^']+)'\]", condition):
                assert channel in inputs.get("parameters", {}), (name, task_name, channel)


TRAINERS = ("exec-train", "exec-tune", "exec-evaluate", "exec-supervised-fine-tuning")  # GPU tasks


def _resources(spec: dict) -> dict[str, dict]:
    return {name: e["container"].get("resources", {}) for name, e in spec["deploymentSpec"]["executors"].items()}


def test_vertex_training_asks_for_the_parameterized_gpus(compiled):
    executors = compiled["vertex"]["deploymentSpec"]["executors"]
    trainers = {name: e["container"] for name, e in executors.items()
                if name.startswith(TRAINERS)}
    assert trainers
    images = {c["image"].rsplit("/", 1)[1].split(":")[0] for c in trainers.values()}
    assert images == {"rlhf-gpu"}
    for container in trainers.values():
        accelerator = container["resources"]["accelerator"]
        # the accelerator comes from a pipeline parameter, never a constant
        assert _placeholders(accelerator["resourceType"]) and _placeholders(accelerator["resourceCount"])
    small = [r for name, r in _resources(compiled["vertex"]).items() if name not in trainers]
    assert small and all("accelerator" not in r and r.get("resourceCpuLimit") for r in small)


def test_kfp_training_asks_for_nvidia_gpus(compiled):
    resources = _resources(compiled["kfp"])
    trainers = {name: r for name, r in resources.items() if name.startswith(TRAINERS)}
    # each GPU stage once: an option changes what a stage does, not how many copies there are
    assert sorted(trainers) == ["exec-evaluate-model", "exec-supervised-fine-tuning", "exec-train-reward-model",
                                "exec-tune-policy"]
    assert all(r["accelerator"]["resourceType"] == "nvidia.com/gpu" for r in trainers.values())
    assert "upload" not in json.dumps(compiled["kfp"]["components"])  # no Vertex-only tasks


# What a person sees at the root of a run, in the order data flows (display names), per target.
STAGES = ["Validate Inputs", "AI Feedback Labels", "Supervised Fine-Tuning", "Train Reward Model", "Tune Policy",
          "Evaluate", "Upload and Deploy"]


def _display_names(spec: dict, component: dict) -> list[str]:
    """Display names of the tasks under `component`, conditions opened, in dependency order."""
    tasks = component["dag"]["tasks"]
    names, done = [], set()
    while len(done) < len(tasks):
        ready = sorted(t for t in tasks if t not in done and set(tasks[t].get("dependentTasks", [])) <= done)
        assert ready, f"a cycle among {sorted(set(tasks) - done)}"
        for t in ready:
            done.add(t)
            ref = spec["components"][tasks[t]["componentRef"]["name"]]
            if "dag" in ref and t.startswith("condition"):
                names += _display_names(spec, ref)
            else:
                names.append(tasks[t]["taskInfo"]["name"])
    return names


@pytest.mark.parametrize("target", ["vertex", "kfp", "trainjob", "pytorchjob"])
def test_each_stage_appears_once_in_a_small_graph(compiled, target):
    """Each stage once, named as a person expects, in the order data flows; at most 25 components and
    300 KB of YAML (Argo's 1 MiB workflow limit holds the spec ~2.85x over, status included)."""
    spec = compiled[target]
    assert len(spec["components"]) <= 25, sorted(spec["components"])
    assert len(yaml.safe_dump(spec)) <= 300_000
    shown = [name for name in _display_names(spec, spec["root"]) if name != "Base Model as Given"]
    expected = STAGES if target == "vertex" else [*STAGES[:-1], "Upload and Deploy (Vertex AI only): skipped"]
    ordered = [name for name in shown if name in expected]
    assert ordered == [name for name in expected if name in ordered] and set(ordered) == set(expected), shown
    assert len(shown) == len(set(shown)), shown


def test_local_pipeline_requests_no_resources():
    from google.protobuf import json_format

    from pipelines.rlhf_pipeline import build_pipeline
    spec = json_format.MessageToDict(build_pipeline("local").pipeline_spec)
    assert all(not r for r in _resources(spec).values())


def test_images_follow_the_package_version_and_the_registry_override(tmp_path):
    from rlhf import __version__
    spec = _compile(tmp_path, "vertex", "--image-registry", "europe-docker.pkg.dev/acme/rlhf")
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"europe-docker.pkg.dev/acme/rlhf/rlhf-{kind}:{__version__}" for kind in ("cpu", "gpu")}
    spec = _compile(tmp_path, "kfp", env=_clean_env(RLHF_GPU_IMAGE="registry.local/trainer@sha256:abc"))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert "registry.local/trainer@sha256:abc" in images


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_a_compiled_pipeline_carries_no_secret_from_the_environment(tmp_path, target):
    secrets = {"HF_TOKEN": "hf_SeCrEtToKeN123456789", "HUGGING_FACE_HUB_TOKEN": "hf_OtherSecret98765",
               "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key-ABCDEF.json")}
    secret_name = "projects/p1/secrets/hf-token/versions/latest"
    spec = _compile(tmp_path, target, "--hub-token-secret", secret_name, env=_clean_env(**secrets))
    text = (tmp_path / f"{target}.yaml").read_text()
    for value in secrets.values():
        assert value not in text
    assert "HF_TOKEN" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text
    # only the secret's name travels, to every task that loads a model
    loaders = {name: e["container"].get("env", []) for name, e in spec["deploymentSpec"]["executors"].items()
               if name.startswith(("exec-validate", "exec-train", "exec-tune", "exec-evaluate", "exec-merge"))}
    assert len(loaders) >= 4
    for env in loaders.values():
        assert {"name": "RLHF_HUB_TOKEN_SECRET", "value": secret_name} in env


def test_hub_token_secret_must_be_a_secret_name_not_a_token(tmp_path):
    done = subprocess.run([sys.executable, "compile.py", "--hub-token-secret", "hf_SeCrEt123",
                           "--output", str(tmp_path / "x.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "never the token itself" in done.stderr
    assert "hf_SeCrEt123" not in done.stderr + done.stdout and not (tmp_path / "x.yaml").exists()


def test_compile_rejects_an_unknown_target(tmp_path):
    done = subprocess.run([sys.executable, "compile.py", "--target", "aws", "--output", str(tmp_path / "x.yaml")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_list_parameters_prints_the_readme_table_in_signature_order(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rlhf", "compile", "--output", str(tmp_path / "p.yaml"),
                           "--list-parameters"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    declared = yaml.safe_load((tmp_path / "p.yaml").read_text())["root"]["inputDefinitions"]["parameters"]
    assert sorted(names) == sorted(declared)
    assert names[:len(GOOGLE_PARAMETERS)] == [name for name, _, _ in GOOGLE_PARAMETERS]  # Google's first
    assert "| `prompt_dataset` | str | **required** |" in done.stdout
    assert "| `kl_coeff` | float | `0.1` |" in done.stdout
