"""Training stages as Vertex AI CustomJobs (`rlhf.jobs`): machine types, the stage's command line,
the CustomJob request as it reaches a local stand-in of the Vertex `customJobs` API through the
real google-cloud-aiplatform client (REST, anonymous), and the launcher following the job to
success, to failure (a non-zero exit carrying the job's error) and to cancellation (SIGTERM).

"Done when": a template compiled for Vertex AI, run with `reinforcement_learning_replica_count=2`,
decides to launch a job and its launcher step, given exactly the values the compiled graph passes,
creates a 2-replica custom job on the stand-in and fills the stage's outputs from what rank 0 wrote.
(No `from __future__ import annotations`: kfp reads component annotations as types.)"""

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Metrics, Model

from components.jobs import launch_reward_model_job, launch_tuning_job
from rlhf import storage
from rlhf.pipeline_inputs import check_values
from rlhf.errors import UserError
from rlhf.jobs import stages
from rlhf.jobs.follow import POLL_ENV, JobFailed
from rlhf.jobs.launcher import Launch, launch_reward
from rlhf.jobs.machines import machine_type_for, machine_type_problem
from rlhf.jobs.stages import Hardware, StageJob
from rlhf.jobs.vertex import API_ENDPOINT_ENV
from rlhf.pipeline_settings import REINFORCEMENT_LEARNING, REWARD_MODEL
from rlhf.ppo.config import PPOConfig
from rlhf.reward.config import RewardConfig
from standins import VertexStandIn

ROOT = Path(__file__).resolve().parents[1]
PROJECT, LOCATION, PIPELINE_JOB = "p1", "us-central1", "rlhf-train-template-20240101000000"
SERVICE_ACCOUNT = "runner@p1.iam.gserviceaccount.com"
NETWORK = "projects/123/global/networks/training"
KMS_KEY = "projects/p1/locations/us-central1/keyRings/ring/cryptoKeys/key"
IMAGE = "us-docker.pkg.dev/rlhf-pipeline/rlhf/rlhf-gpu:0.1.0"


# -- machine types and the command line --------------------------------------------------------------

def test_machine_types_follow_the_accelerator_type_and_count():
    assert machine_type_for("NVIDIA_L4", 1) == "g2-standard-12"
    assert machine_type_for("NVIDIA_L4", 8) == "g2-standard-96"
    assert machine_type_for("NVIDIA_TESLA_A100", 16) == "a2-megagpu-16g"
    assert machine_type_for("NVIDIA_A100_80GB", 8) == "a2-ultragpu-8g"
    assert machine_type_for("NVIDIA_H100_80GB", 8) == "a3-highgpu-8g"
    assert machine_type_for("NVIDIA_H100_80GB", 1, "a3-highgpu-1g") == "a3-highgpu-1g"  # given wins
    with pytest.raises(UserError, match=r"NVIDIA_H100_80GB machines carry 8 \(a3-highgpu-8g\) GPUs, not 1: .* "
                                        r"set reinforcement_learning_machine_type"):
        machine_type_for("NVIDIA_H100_80GB", 1, what="reinforcement_learning_machine_type")
    assert machine_type_problem("") is None and machine_type_problem("n1-highmem-16") is None
    assert "a3-highgpu-8g" in machine_type_problem("A3 HighGPU")


def _parse(config_class, argv):
    parser = argparse.ArgumentParser()
    config_class.add_arguments(parser)
    return config_class.from_args(parser.parse_args(argv))


def test_the_job_command_parses_back_into_the_config_the_component_would_build():
    reward = stages.reward_job(
        image=IMAGE, hardware=Hardware(2, "NVIDIA_L4", 1), preference_data="gs://b/pref",
        eval_data="/gcs/b/eval", reward_model="gs://b/rm", tensorboard_logs="gs://b/tb",
        settings={**REWARD_MODEL.defaults(), "reward_model_train_steps": 7, "instruction": "Be brief."},
        options={"margin": 0.5, "save_merged_model": True, "lora_target_modules": ["q_proj", "v_proj"]})
    assert reward.command[:4] == ["python", "-m", "rlhf", "train-reward"]
    config = _parse(RewardConfig, reward.command[4:])
    assert (config.output_dir, config.tensorboard_dir, config.eval_dataset) == ("gs://b/rm", "gs://b/tb", "gs://b/eval")
    assert config == REWARD_MODEL.build({**REWARD_MODEL.defaults(), "reward_model_train_steps": 7,
                                         "instruction": "Be brief.", "preference_dataset": "gs://b/pref",
                                         "eval_dataset": "gs://b/eval", "output_dir": "gs://b/rm",
                                         "tensorboard_dir": "gs://b/tb"},
                                        {"margin": 0.5, "save_merged_model": True,
                                         "lora_target_modules": ["q_proj", "v_proj"]})
    ppo = stages.ppo_job(image=IMAGE, hardware=Hardware(2, "NVIDIA_L4", 1), prompt_data="gs://b/prompts",
                         reward_model="gs://b/rm", policy_adapter="gs://b/task/policy_adapter",
                         settings={**REINFORCEMENT_LEARNING.defaults(), "kl_coeff": 0.05},
                         options={"adaptive_kl": True, "mini_batch_size": 8})
    config = _parse(PPOConfig, ppo.command[4:])
    assert ppo.command[3] == "tune" and config.output_dir == "gs://b/task/ppo_run"
    assert (config.kl_coeff, config.adaptive_kl, config.mini_batch_size) == (0.05, True, 8)


def test_a_job_needs_cloud_storage_and_valid_settings():
    with pytest.raises(UserError, match="gs:// pipeline root"):
        stages.reward_job(image=IMAGE, hardware=Hardware(2, "NVIDIA_L4", 1), preference_data="minio://m/pref",
                          reward_model="gs://b/rm", tensorboard_logs="gs://b/tb",
                          settings=REWARD_MODEL.defaults(), options={})
    with pytest.raises(UserError, match="reward-model-train-steps"):
        stages.reward_job(image=IMAGE, hardware=Hardware(2, "NVIDIA_L4", 1), preference_data="gs://b/pref",
                          reward_model="gs://b/rm", tensorboard_logs="gs://b/tb",
                          settings={**REWARD_MODEL.defaults(), "reward_model_train_steps": 0}, options={})


# -- the CustomJob request through the real client -----------------------------------------------------

def _rank0_writes(job: dict, state: str) -> None:
    """What global rank 0 of `rlhf train-reward` / `rlhf tune` leaves at --output-dir when the job
    succeeds (small stand-ins of the real files), so the launcher has something to fill outputs from."""
    if state != "JOB_STATE_SUCCEEDED":
        return
    args = job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
    out = args[args.index("--output-dir") + 1]
    if args[0] == "train-reward":
        storage.write_json(storage.join(out, "metrics.json"), {
            "heldout/accuracy": 0.75, "reward/normalization_mean": 0.1,
            "heldout/confusion_matrix": [[3, 1], [1, 3]]})
        storage.write_json(storage.join(out, "reward_model.json"), {"format": "rlhf-reward-model/1"})
        tensorboard = args[args.index("--tensorboard-dir") + 1]
        storage.write_text(storage.join(tensorboard, "events.out.tfevents.1.rank0"), "events")
    else:
        storage.write_json(storage.join(out, "policy_adapter", "ppo_config.json"), {"base_model": "llama-2-7b"})
        storage.write_text(storage.join(out, "policy_adapter", "adapter_config.json"), "{}")
        storage.write_text(storage.join(out, "tensorboard", "events.out.tfevents.1.rank0"), "events")
        storage.write_text(storage.join(out, "samples", "step-00000002.jsonl"), '{"prompt": "p"}\n')
        storage.write_json(storage.join(out, "summary.json"), {"reward/mean": 1.5, "policy/kl": 0.01})


@pytest.fixture
def vertex(gcs_emulator, monkeypatch):
    monkeypatch.setenv(POLL_ENV, "0.05")
    with VertexStandIn(on_custom_job_state=_rank0_writes) as standin:
        standin.add_pipeline_job(PROJECT, LOCATION, PIPELINE_JOB, serviceAccount=SERVICE_ACCOUNT, network=NETWORK,
                                 encryptionSpec={"kmsKeyName": KMS_KEY},
                                 labels={"vertex-ai-pipelines-run-billing-id": "42", "team": "nlp"})
        monkeypatch.setenv(API_ENDPOINT_ENV, standin.url)
        yield standin


def _machine(pool: dict) -> dict:
    """The pool's machine spec with the accelerator by name (the REST transport sends enums as numbers)."""
    from google.cloud.aiplatform_v1.types import AcceleratorType
    spec = dict(pool["machineSpec"])
    if isinstance(spec.get("acceleratorType"), int):
        spec["acceleratorType"] = AcceleratorType(spec["acceleratorType"]).name
    return spec


def _launch(replicas: int, machine_type: str = "", pipeline_root: str = "", kms: str = "") -> Launch:
    return Launch("vertex", IMAGE, Hardware(replicas, "NVIDIA_L4", 1, machine_type, "8", "32G"), PROJECT, LOCATION,
                  PIPELINE_JOB, pipeline_root, kms)


def test_the_custom_job_request_carries_pools_machines_image_command_and_the_pipelines_context(
        vertex, gcs_prefix, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_HUB_TOKEN_SECRET", "projects/p1/secrets/hf/versions/1")
    storage.write_text(f"{gcs_prefix}/pref/data.jsonl", "{}\n")
    scalars, confusion = launch_reward(
        _launch(3, pipeline_root=f"{gcs_prefix}/root"), {**REWARD_MODEL.defaults(), "large_model_reference": "llama-2-7b"},
        {"margin": 0.5}, Dataset(uri=f"{gcs_prefix}/pref"), None, Model(uri=f"{gcs_prefix}/task/reward_model"),
        Artifact(uri=f"{gcs_prefix}/task/tensorboard_logs"))

    (request,) = vertex.requests_to("POST", r"/customJobs$")
    assert request.path == f"/v1/projects/{PROJECT}/locations/{LOCATION}/customJobs"
    body = request.body
    spec = body["jobSpec"]
    pools = spec["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == ["1", "2"]  # int64 as a JSON string
    for pool in pools:
        assert _machine(pool) == {"machineType": "g2-standard-12", "acceleratorType": "NVIDIA_L4",
                                  "acceleratorCount": 1}
        container = pool["containerSpec"]
        assert container["imageUri"] == IMAGE
        assert container["command"] == ["python", "-m", "rlhf"]
        assert container["args"][0] == "train-reward"
        assert {e["name"]: e["value"] for e in container["env"]} == {
            "PYTHONUNBUFFERED": "1", "RLHF_HUB_TOKEN_SECRET": "projects/p1/secrets/hf/versions/1"}
        assert pool["diskSpec"] == {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 500}
    assert pools[0]["containerSpec"] == pools[1]["containerSpec"]
    args = pools[0]["containerSpec"]["args"]
    assert args[args.index("--output-dir") + 1] == f"{gcs_prefix}/task/reward_model"
    assert args[args.index("--preference-dataset") + 1] == f"{gcs_prefix}/pref"
    assert args[args.index("--margin") + 1] == "0.5"
    assert spec["serviceAccount"] == SERVICE_ACCOUNT and spec["network"] == NETWORK
    assert spec["scheduling"]["restartJobOnWorkerRestart"] is True
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == f"{gcs_prefix}/root/{PIPELINE_JOB}/reward-model-custom-job"
    assert body["encryptionSpec"] == {"kmsKeyName": KMS_KEY}  # the pipeline job's, no parameter given
    assert body["labels"] == {"vertex-ai-pipelines-run-billing-id": "42", "team": "nlp", "rlhf-stage": "reward-model",
                              "rlhf-pipeline-job": PIPELINE_JOB}
    assert body["displayName"] == f"{PIPELINE_JOB}-reward-model"

    # followed to success, each state once, with the console link; outputs from rank 0's files
    log = capsys.readouterr().out
    job_id = vertex.custom_jobs and next(iter(vertex.custom_jobs)).rsplit("/", 1)[1]
    assert f"https://console.cloud.google.com/vertex-ai/locations/{LOCATION}/training/{job_id}/cpu?project={PROJECT}" in log
    states = [line.split(": ")[1] for line in log.splitlines() if line.startswith(f"custom job {job_id}: ")]
    assert states == ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    assert scalars == {"heldout/accuracy": 0.75, "reward/normalization_mean": 0.1}
    assert confusion == [[3, 1], [1, 3]]


def test_the_cmek_parameter_wins_and_a_machine_type_alone_makes_a_one_pool_job(vertex, gcs_prefix):
    other_key = KMS_KEY.replace("/key", "/other")
    launch_reward(_launch(1, "g2-standard-48", f"{gcs_prefix}/root", kms=other_key), REWARD_MODEL.defaults(), {},
                  Dataset(uri=f"{gcs_prefix}/pref"), None, Model(uri=f"{gcs_prefix}/rm"),
                  Artifact(uri=f"{gcs_prefix}/tb"))
    (request,) = vertex.requests_to("POST", r"/customJobs$")
    assert request.body["encryptionSpec"] == {"kmsKeyName": other_key}
    # an unresolved pipeline-root placeholder: the run's directory, found from an output
    launch = _launch(2, pipeline_root="{{$.pipeline_root}}")
    assert launch.storage_root("gs://b/root/123-run/tune-policy/policy_adapter") == "gs://b/root"
    (pool,) = request.body["jobSpec"]["workerPoolSpecs"]
    assert pool["replicaCount"] == "1" and _machine(pool)["machineType"] == "g2-standard-48"


# -- "done when": the compiled template, run with reinforcement_learning_replica_count=2 ----------------

def _compile(path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    done = subprocess.run([sys.executable, "-m", "rlhf", "compile", "--target", "vertex", "--output", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(path.read_text())


def _task_values(spec: dict, task_path: str, params: dict) -> dict:
    """The parameter values the compiled graph hands to the first task whose path of task names ends
    with `task_path` (e.g. `reinforcement-learning/runs-as-job`; branches in order, If before Else),
    given the pipeline's parameter values: each DAG level resolved from the one above. Also the
    conditions met on the way, as (condition, values of the group that holds it). By task names, as
    kfp numbers component copies (`comp-runs-as-job-2-2`) differently from one compile to the next."""
    wanted = task_path.split("/")

    def walk(dag_component: dict, values: dict, conditions: list, path: tuple = ()):
        for task_name, task in sorted(dag_component.get("dag", {}).get("tasks", {}).items()):
            resolved = {}
            for name, source in task.get("inputs", {}).get("parameters", {}).items():
                if "componentInputParameter" in source:
                    resolved[name] = values.get(source["componentInputParameter"])
                elif "runtimeValue" in source:
                    resolved[name] = source["runtimeValue"]["constant"]
                else:
                    resolved[name] = source  # another task's output
            condition = task.get("triggerPolicy", {}).get("condition")
            found_conditions = conditions + ([(condition, resolved)] if condition else [])
            if list((*path, task_name)[-len(wanted):]) == wanted:
                declared = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
                for name, value in resolved.items():  # KFP's executor hands a Python task typed values
                    if declared[name]["parameterType"] == "NUMBER_INTEGER" and isinstance(value, float):
                        resolved[name] = int(value)
                return resolved, found_conditions
            found = walk(spec["components"][task["componentRef"]["name"]], resolved, found_conditions,
                         (*path, task_name))
            if found:
                return found
        return None
    root = spec["root"]
    values = {name: p.get("defaultValue") for name, p in root["inputDefinitions"]["parameters"].items()}
    values.update(params)
    return walk(root, values, [])


def _vertex_placeholders(value):
    """What Vertex AI puts in for the placeholders a task input may hold."""
    if not isinstance(value, str):
        return value
    return (value.replace("{{$.pipeline_google_cloud_project_id}}", PROJECT)
            .replace("{{$.pipeline_google_cloud_location}}", LOCATION)
            .replace("{{$.pipeline_job_name}}", PIPELINE_JOB)
            .replace("{{$.pipeline_root}}", _vertex_placeholders.root))


@pytest.fixture(scope="module")
def vertex_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "vertex.yaml"
    _compile(path)
    return path


def test_replica_counts_and_machine_types_are_checked_before_submitting(vertex_template):
    from rlhf.parameters import check_parameters, load_template
    template = load_template(str(vertex_template))
    given = {"prompt_dataset": "gs://bucket/p.jsonl", "preference_dataset": "gs://bucket/pref.jsonl",
             "large_model_reference": "smollm2-135m-instruct"}
    with pytest.raises(UserError) as caught:
        check_parameters(template, {**given, "reinforcement_learning_replica_count": 0,
                                    "reward_model_machine_type": "A3 HighGPU"}, {})
    assert "'reinforcement_learning_replica_count' must be at least 1, got 0" in str(caught.value)
    assert "'reward_model_machine_type' must be a Vertex AI machine type such as a3-highgpu-8g" in str(caught.value)
    with pytest.raises(UserError, match=r"reinforcement_learning_replica_count 2: NVIDIA_H100_80GB machines carry 8 "
                                        r"\(a3-highgpu-8g\) GPUs, not 1"):
        check_parameters(template, {**given, "reinforcement_learning_replica_count": 2,
                                    "reinforcement_learning_accelerator_type": "NVIDIA_H100_80GB"}, {})
    checked = check_parameters(template, {**given, "reinforcement_learning_replica_count": 2,
                                          "reinforcement_learning_machine_type": "a3-highgpu-1g",
                                          "reinforcement_learning_accelerator_type": "NVIDIA_H100_80GB"}, {})
    assert checked["reinforcement_learning_replica_count"] == 2


def test_a_template_compiled_for_vertex_launches_a_two_replica_custom_job(vertex, gcs_prefix, vertex_template, capsys):
    spec = yaml.safe_load(vertex_template.read_text())
    given = {"prompt_dataset": "gs://b/p.jsonl", "preference_dataset": "gs://b/pref.jsonl",
             "large_model_reference": "llama-2-7b"}

    # the first task's checked answer: one machine by default (in the task), a job with two
    small = {"prompt_dataset": "gs://bucket/p.jsonl", "preference_dataset": "gs://bucket/pref.jsonl",
             "large_model_reference": "smollm2-135m-instruct"}  # fits the default L4s
    checks, _ = _task_values(spec, "validate-inputs", small)
    assert check_values(checks, "vertex", launches_jobs=True).tuning_as_job is False
    checks, _ = _task_values(spec, "validate-inputs", {**small, "reinforcement_learning_replica_count": 2})
    assert check_values(checks, "vertex", launches_jobs=True).tuning_as_job is True

    values, conditions = _task_values(spec, "launch-tuning-job", {**given, "reinforcement_learning_replica_count": 2})
    assert [c for c, _ in conditions] == ["inputs.parameter_values['pipelinechannel--as_job'] == true"]
    _vertex_placeholders.root = f"{gcs_prefix}/root"
    values = {k: _vertex_placeholders(v) for k, v in values.items()}
    assert values["large_model_reference"]["taskOutputParameter"]["producerTask"].startswith("condition-branches")
    values["large_model_reference"] = given["large_model_reference"]  # SFT off: the base model as given
    assert (values["replica_count"], values["platform"], values["project"]) == (2, "vertex", PROJECT)

    task = f"{gcs_prefix}/root/{PIPELINE_JOB}/tune-policy"
    outputs = {"policy_adapter": Model(uri=f"{task}/policy_adapter"), "metrics": Metrics(uri=f"{task}/metrics"),
               "tensorboard_logs": Artifact(uri=f"{task}/tensorboard_logs"), "samples": Artifact(uri=f"{task}/samples")}
    launch_tuning_job.python_func(prompt_data=Dataset(uri=f"{gcs_prefix}/prompt_data"),
                                  preference_data=Dataset(uri=f"{gcs_prefix}/preference_data"),
                                  reward_model=Model(uri=f"{gcs_prefix}/reward_model"), **outputs, **values)

    (request,) = vertex.requests_to("POST", r"/customJobs$")
    pools = request.body["jobSpec"]["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == ["1", "1"]
    assert all(_machine(p) == {"machineType": "g2-standard-12", "acceleratorType": "NVIDIA_L4",
                               "acceleratorCount": 1} for p in pools)
    args = pools[0]["containerSpec"]["args"]
    assert args[:1] == ["tune"] and args[args.index("--output-dir") + 1] == f"{task}/ppo_run"
    assert args[args.index("--large-model-reference") + 1] == "llama-2-7b"
    assert pools[0]["containerSpec"]["imageUri"].endswith("/rlhf-gpu:0.1.0")
    # the stage's outputs, filled from the run directory rank 0 wrote
    assert outputs["metrics"].metadata == {"reward/mean": 1.5, "policy/kl": 0.01}
    assert outputs["policy_adapter"].metadata == {"base_model": "llama-2-7b"}
    assert storage.read_text(f"{task}/samples/step-00000002.jsonl") == '{"prompt": "p"}\n'
    assert storage.exists(f"{task}/policy_adapter/adapter_config.json")


def test_the_reward_launcher_component_fills_the_same_outputs_as_the_in_task_step(vertex, gcs_prefix):
    task = f"{gcs_prefix}/root/{PIPELINE_JOB}/train-reward-model"
    outputs = {"reward_model": Model(uri=f"{task}/reward_model"), "metrics": Metrics(uri=f"{task}/metrics"),
               "classification_metrics": ClassificationMetrics(uri=f"{task}/classification_metrics"),
               "tensorboard_logs": Artifact(uri=f"{task}/tensorboard_logs")}
    settings = {**REWARD_MODEL.defaults(), "large_model_reference": "llama-2-7b"}
    launch_reward_model_job.python_func(
        preference_data=Dataset(uri=f"{gcs_prefix}/pref"), **outputs, **settings, options={},
        existing_classifier="", tensorboard_resource_id="", platform="vertex", image=IMAGE, replica_count=2, machine_type="", gpu_type="NVIDIA_L4", gpu_count=1,
        cpu_limit="8", memory_limit="32G", project=PROJECT, location=LOCATION, pipeline_job_name=PIPELINE_JOB,
        pipeline_root=f"{gcs_prefix}/root", encryption_spec_key_name="")
    assert outputs["metrics"].metadata == {"heldout/accuracy": 0.75, "reward/normalization_mean": 0.1}
    assert outputs["classification_metrics"].metadata["confusionMatrix"]["rows"] == [{"row": [3, 1]}, {"row": [1, 3]}]
    assert outputs["reward_model"].metadata == {"base_model": "llama-2-7b"}


def test_launcher_inputs_are_the_trainers_plus_where_the_job_runs():
    from components.reward import train_reward_model
    from components.tune import tune_policy
    import inspect
    where = {"platform", "image", "replica_count", "machine_type", "gpu_type", "gpu_count", "cpu_limit",
             "memory_limit", "project", "location", "pipeline_root", "encryption_spec_key_name"}
    for trainer, launcher in ((train_reward_model, launch_reward_model_job), (tune_policy, launch_tuning_job)):
        ours = inspect.signature(launcher.python_func).parameters
        theirs = inspect.signature(trainer.python_func).parameters
        assert set(ours) - set(theirs) == where
        assert all(ours[n].annotation == p.annotation for n, p in theirs.items())


# -- failure and cancellation: the launcher as its own process, as in a pipeline task --------------------

LAUNCHER_SCRIPT = textwrap.dedent("""
    import sys
    from kfp.dsl import Artifact, Dataset, Metrics, Model
    from components.jobs import launch_tuning_job
    from rlhf.pipeline_settings import REINFORCEMENT_LEARNING
    prefix = sys.argv[1]
    launch_tuning_job.python_func(
        prompt_data=Dataset(uri=prefix + "/prompts"), preference_data=Dataset(uri=prefix + "/prefs"),
        reward_model=Model(uri=prefix + "/rm"), tuning_method="ppo", dpo_options={}, tensorboard_resource_id="",
        policy_adapter=Model(uri=prefix + "/task/policy_adapter"), metrics=Metrics(uri=prefix + "/task/metrics"),
        tensorboard_logs=Artifact(uri=prefix + "/task/tb"), samples=Artifact(uri=prefix + "/task/samples"),
        **dict(REINFORCEMENT_LEARNING.defaults(), large_model_reference="llama-2-7b"), options={}, platform="vertex",
        image="img", replica_count=2, machine_type="", gpu_type="NVIDIA_L4", gpu_count=1, cpu_limit="8",
        memory_limit="32G", project="p1", location="us-central1", pipeline_job_name="run-1",
        pipeline_root=prefix + "/root", encryption_spec_key_name="")
""")


def _launcher_process(gcs_prefix) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", LAUNCHER_SCRIPT, gcs_prefix], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_failed_job_fails_the_launcher_with_the_jobs_own_error(vertex, gcs_prefix):
    error = "The replica workerpool1-0 exited with a non-zero status of 1. Termination reason: Error."
    vertex.custom_job_states = ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_FAILED"]
    vertex.custom_job_error = error
    proc = _launcher_process(gcs_prefix)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "JobFailed" in err and f"ended JOB_STATE_FAILED: {error}" in err
    assert "JOB_STATE_RUNNING" in out


def test_cancelling_the_pipeline_task_cancels_the_job(vertex, gcs_prefix):
    vertex.custom_job_states = ["JOB_STATE_PENDING", "JOB_STATE_RUNNING"]  # runs until cancelled
    proc = _launcher_process(gcs_prefix)
    deadline = time.monotonic() + 90
    while not any(j["state"] == "JOB_STATE_RUNNING" for j in vertex.custom_jobs.values()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what KFP / Vertex do to a task of a cancelled run
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert len(vertex.requests_to("POST", r"/customJobs/[^/]+:cancel$")) == 1
    (job,) = vertex.custom_jobs.values()
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert "cancelling the job" in out and "JOB_STATE_CANCELLED" in out
    assert "JobCancelled" in err


def test_follow_raises_on_failure_in_process():
    from rlhf.jobs.follow import Status, follow
    states = iter([Status("RUNNING"), Status("FAILED", done=True, failed=True, message="OOM on node 1")])
    with pytest.raises(JobFailed, match="job ended FAILED: OOM on node 1"):
        follow("job", lambda: next(states), lambda: None, interval_s=0, say=lambda m: None)


@pytest.mark.parametrize("accelerator, count, machine, disk", [
    ("NVIDIA_L4", 1, "", "pd-ssd"),
    ("NVIDIA_H100_80GB", 8, "", "pd-ssd"),
    ("NVIDIA_H200_141GB", 8, "", "hyperdisk-balanced"),   # a3-ultragpu-8g
    ("NVIDIA_B200", 8, "", "hyperdisk-balanced"),         # a4-highgpu-8g
    ("NVIDIA_H100_80GB", 8, "a3-megagpu-8g", "pd-ssd"),
])
def test_each_machine_family_boots_from_a_disk_it_supports(accelerator, count, machine, disk):
    from rlhf.jobs.vertex import worker_pool_specs
    job = StageJob("reinforcement-learning", IMAGE, ["tune"], Hardware(2, accelerator, count, machine))
    pools = worker_pool_specs(job)
    assert {p["disk_spec"]["boot_disk_type"] for p in pools} == {disk}, pools[0]["machine_spec"]


def test_a3_ultra_boots_from_the_disk_vertex_documents_as_its_default():
    """Read from the service's own definition (the DiskSpec message of the installed client), not
    from our expectation: A3 Ultra defaults to hyperdisk-balanced, every other machine to pd-ssd."""
    import re as regex
    from google.cloud.aiplatform_v1.types import DiskSpec
    from rlhf.jobs.vertex import boot_disk_type
    doc = " ".join(DiskSpec.__doc__.split())
    documented = regex.search(r'for A3U machines, the default value is "([a-z-]+)"', doc).group(1)
    other = regex.search(r'For non-A3U machines, the default value is "([a-z-]+)"', doc).group(1)
    assert boot_disk_type("a3-ultragpu-8g") == documented
    assert boot_disk_type("a2-ultragpu-8g") == other == "pd-ssd"
