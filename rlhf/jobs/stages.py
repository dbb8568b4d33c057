"""What a training stage's job runs, and how the launcher fills the stage's outputs afterwards.

The job runs the stage's own command on every node with the settings the in-task component would
pass (the same `rlhf.pipeline_settings` table builds the config), reading its inputs from and
writing its outputs to the stage's artifact URIs on Cloud Storage: global rank 0 writes exactly
what the in-task step writes, where it writes it. After the job succeeds the launcher reads back
the metrics rank 0 wrote, for the stage's Metrics artifacts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from rlhf import storage
from rlhf.credentials import HUB_TOKEN_SECRET_ENV
from rlhf.errors import UserError
from rlhf.ppo.outputs import run_dir_beside
from rlhf.settings import Settings, base_type, flag

PYTHON = ["python", "-m", "rlhf"]


@dataclass(frozen=True)
class Hardware:
    """One node of the job (every node alike) and how many nodes."""
    replica_count: int
    accelerator_type: str        # Vertex name (NVIDIA_L4, ...); unused on Kubernetes
    accelerator_count: int
    machine_type: str = ""       # Vertex machine type; on Kubernetes a node selector; "": from the GPUs
    cpu_limit: str = ""          # Kubernetes resources per node ("": none asked)
    memory_limit: str = ""

    def problems(self) -> list[str]:
        out = []
        if self.replica_count < 1:
            out.append(f"replica_count must be at least 1, got {self.replica_count}")
        if self.accelerator_count < 0:
            out.append(f"accelerator_count must be 0 or more, got {self.accelerator_count}")
        return out


@dataclass(frozen=True)
class StageJob:
    """A stage's job, platform-neutral: `rlhf.jobs.vertex` and `rlhf.jobs.kubernetes` render it."""
    stage: str                   # reward-model | reinforcement-learning
    image: str
    args: list[str]              # after PYTHON: ["train-reward", "--output-dir", "gs://...", ...]
    hardware: Hardware
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        return PYTHON + self.args


def command_line(subcommand: str, config: Settings) -> list[str]:
    """`[subcommand, --flag, value, ...]` that `rlhf <subcommand>` parses back into `config`: every
    field that differs from its default (so the command stays short and defaults stay the CLI's)."""
    hints = typing.get_type_hints(type(config))
    defaults = type(config).defaults()
    out = [subcommand]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in defaults and value == defaults[f.name]:
            continue
        kind = base_type(hints[f.name])
        if kind is bool:
            out.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        elif kind is list:
            if not value:
                raise UserError(f"{f.name}: an empty list cannot be passed as {flag(f.name)} on a command line")
            out += [flag(f.name), *map(str, value)]
        elif value is not None:
            out += [flag(f.name), repr(value) if kind is float else str(value)]
    return out


def job_environment() -> dict[str, str]:
    """What every node's container gets besides the image's own: unbuffered logs and the hub-token
    secret's name when this launcher was given one (the nodes read the token themselves)."""
    env = {"PYTHONUNBUFFERED": "1"}
    secret = os.environ.get(HUB_TOKEN_SECRET_ENV, "").strip()
    if secret:
        env[HUB_TOKEN_SECRET_ENV] = secret
    return env


def remote(uri: str, what: str) -> str:
    """`uri` when the job's nodes can reach it (Cloud Storage), else a UserError saying why."""
    if uri.startswith("gs://"):
        return uri
    if uri.startswith("/gcs/"):
        return "gs://" + uri[len("/gcs/"):]
    raise UserError(f"{what} is at {uri!r}, which a multi-node job's machines cannot reach: run the pipeline "
                    f"with a gs:// pipeline root (e.g. `rlhf submit --pipeline-root gs://BUCKET/runs`)")


def _check(config: Settings, hardware: Hardware) -> None:
    config.validate(inputs=False)
    problems = hardware.problems()
    if problems:
        raise UserError("; ".join(problems))


# -- reward model ------------------------------------------------------------------------------------

def reward_job(*, image: str, hardware: Hardware, preference_data: str, reward_model: str,
               tensorboard_logs: str, settings: Mapping[str, Any], options: Optional[Mapping[str, Any]],
               eval_data: Optional[str] = None, labeled_data: Optional[str] = None) -> StageJob:
    """The reward stage as a job: `rlhf train-reward` writing the model to `reward_model` and the
    event files to `tensorboard_logs` (artifact URIs), as `components.reward` does in its task."""
    from rlhf.pipeline_settings import REWARD_MODEL
    config = REWARD_MODEL.build({
        **settings, "preference_dataset": remote(preference_data, "preference_data"),
        "eval_dataset": remote(eval_data, "eval_data") if eval_data else "",
        "labeled_dataset": remote(labeled_data, "labeled_data") if labeled_data else "",
        "output_dir": remote(reward_model, "reward_model"),
        "tensorboard_dir": remote(tensorboard_logs, "tensorboard_logs")}, options)
    _check(config, hardware)
    return StageJob("reward-model", image, command_line("train-reward", config), hardware, job_environment())


def reward_results(reward_model: str) -> tuple[dict[str, float], Optional[list]]:
    """What rank 0 wrote beside the model (`metrics.json`): the scalar metrics and the confusion
    matrix of the last evaluation (eval set, else held-out; None when there was none)."""
    from rlhf.reward.metrics import scalar_metrics
    final = storage.read_json(storage.join(reward_model, "metrics.json"))
    prefix = "eval" if "eval/confusion_matrix" in final else "heldout"
    return scalar_metrics(final), final.get(f"{prefix}/confusion_matrix")


# -- reinforcement learning --------------------------------------------------------------------------

def ppo_job(*, image: str, hardware: Hardware, prompt_data: str, reward_model: str, policy_adapter: str,
            settings: Mapping[str, Any], options: Optional[Mapping[str, Any]], positive_label: str = "") -> StageJob:
    """The PPO stage as a job: `rlhf tune` with its run directory beside the adapter artifact.
    `positive_label`: the class of an existing classifier `reward_model` (rlhf.reward.existing)."""
    from rlhf.pipeline_settings import REINFORCEMENT_LEARNING
    config = REINFORCEMENT_LEARNING.build({
        **settings, "prompt_dataset": remote(prompt_data, "prompt_data"),
        "reward_model": remote(reward_model, "reward_model"), "positive_label": positive_label,
        "output_dir": run_dir_beside(remote(policy_adapter, "policy_adapter"))}, options)
    _check(config, hardware)
    return StageJob("reinforcement-learning", image, command_line("tune", config), hardware, job_environment())


def ppo_results(policy_adapter_uri: str, adapter_path: str, tensorboard_path: str,
                samples_path: str) -> tuple[dict[str, float], str]:
    """Copy the finished run's adapter, event files and samples into the stage's artifacts (as
    `components.ppo` does) and return the run's summary metrics and base model."""
    from rlhf.ppo.outputs import OutputLayout, export_artifacts
    run_dir = run_dir_beside(remote(policy_adapter_uri, "policy_adapter"))
    export_artifacts(run_dir, adapter_path, tensorboard_path, samples_path)
    summary = storage.read_json(OutputLayout(run_dir).summary_path)
    base_model = storage.read_json(storage.join(adapter_path, "ppo_config.json"))["base_model"]
    return summary, base_model
