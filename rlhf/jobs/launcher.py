"""The launcher step's logic (the KFP components in `components/jobs.py` are a few lines over this):
build the stage's job, run it on the stage's platform, fill the stage's outputs.

Artifacts arrive as KFP artifacts, used only through `.uri` (where the nodes read and write: Cloud
Storage) and `.path` (where this task hands its outputs to KFP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from rlhf import storage
from rlhf.errors import UserError
from rlhf.jobs import stages
from rlhf.jobs.follow import Status, say
from rlhf.jobs.stages import Hardware, StageJob

PLATFORMS = ("vertex", "trainjob", "pytorchjob")


@dataclass(frozen=True)
class Launch:
    """Where and how a stage's job runs; the launcher component's inputs besides the settings."""
    platform: str                 # vertex | trainjob | pytorchjob (fixed when compiling)
    image: str                    # the trainer image the in-task component uses
    hardware: Hardware
    project: str = ""             # Vertex: the pipeline's project and region
    location: str = ""
    pipeline_job_name: str = ""
    pipeline_root: str = ""       # Vertex: the custom job's base output directory lies under it
    encryption_spec_key_name: str = ""

    def __post_init__(self):
        if self.platform not in PLATFORMS:
            raise UserError(f"unknown job platform {self.platform!r}: one of {', '.join(PLATFORMS)}")

    def storage_root(self, output_uri: str) -> str:
        """The pipeline's Cloud Storage root; should the placeholder have arrived unresolved, a
        directory under it: three levels above an output (Vertex writes `ROOT/PROJECT_NUMBER/RUN/
        TASK/OUTPUT`)."""
        if self.pipeline_root.startswith("gs://"):
            return self.pipeline_root
        return output_uri.rstrip("/").rsplit("/", 3)[0]

    def run(self, job: StageJob, output_uri: str, interval_s: Optional[float] = None,
            say: Callable[[str], None] = say) -> Status:
        """Run `job` to success (or raise); `output_uri`: one of the stage's outputs."""
        if self.platform == "vertex":
            from rlhf.jobs.vertex import run_custom_job
            return run_custom_job(job, project=self.project, location=self.location,
                                  pipeline_job_name=self.pipeline_job_name,
                                  pipeline_root=self.storage_root(output_uri),
                                  encryption_spec_key_name=self.encryption_spec_key_name,
                                  interval_s=interval_s, say=say)
        from rlhf.jobs.kubernetes import run_kubernetes_job
        return run_kubernetes_job(job, self.platform, pipeline_job_name=self.pipeline_job_name,
                                  interval_s=interval_s, say=say)

    def hand_over(self, uri: str, path: str) -> None:
        """Make what the job wrote at `uri` this task's output at `path`. On Vertex AI the path is
        the Cloud Storage FUSE mount of the same objects; on Kubeflow it is a local directory that
        KFP uploads after the task, so copy the files there."""
        if self.platform != "vertex":
            storage.download_dir(uri, path)


def launch_reward(launch: Launch, settings: Mapping[str, Any], options: Optional[Mapping[str, Any]],
                  preference_data, eval_data, reward_model, tensorboard_logs,
                  interval_s: Optional[float] = None,
                  labeled_data=None) -> tuple[dict[str, float], Optional[list]]:
    """Run the reward stage as a job; returns (scalar metrics, confusion matrix or None)."""
    job = stages.reward_job(image=launch.image, hardware=launch.hardware, preference_data=preference_data.uri,
                            eval_data=eval_data.uri if eval_data is not None else None,
                            labeled_data=labeled_data.uri if labeled_data is not None else None,
                            reward_model=reward_model.uri, tensorboard_logs=tensorboard_logs.uri,
                            settings=settings, options=options)
    model_uri = stages.remote(reward_model.uri, "reward_model")
    launch.run(job, model_uri, interval_s=interval_s)
    launch.hand_over(model_uri, reward_model.path)
    launch.hand_over(stages.remote(tensorboard_logs.uri, "tensorboard_logs"), tensorboard_logs.path)
    return stages.reward_results(model_uri)


def launch_ppo(launch: Launch, settings: Mapping[str, Any], options: Optional[Mapping[str, Any]],
               prompt_data, reward_model, policy_adapter, tensorboard_logs, samples,
               interval_s: Optional[float] = None) -> tuple[dict[str, float], str]:
    """Run the PPO stage as a job; returns (summary metrics, base model)."""
    from rlhf.reward.existing import reward_settings
    # a trained reward model, or the reference to an existing classifier (read here, once)
    reward = reward_settings(stages.remote(reward_model.uri, "reward_model"), resolve=False)
    job = stages.ppo_job(image=launch.image, hardware=launch.hardware, prompt_data=prompt_data.uri,
                         reward_model=reward["reward_model"], policy_adapter=policy_adapter.uri,
                         settings=settings, options=options, positive_label=reward["positive_label"])
    launch.run(job, stages.remote(policy_adapter.uri, "policy_adapter"), interval_s=interval_s)
    return stages.ppo_results(policy_adapter.uri, policy_adapter.path, tensorboard_logs.path, samples.path)
