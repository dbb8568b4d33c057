"""A DPO run's output directory: PPO's layout (``rlhf.ppo.outputs``: ``policy_adapter/`` in peft
format with ``ppo_config.json`` naming the base model, ``metrics.jsonl``, ``summary.json`` written
last, ``tensorboard/``, ``samples/``, ``checkpoints/``), so evaluation and deployment take the
policy of either method alike."""

from __future__ import annotations

from rlhf import storage
from rlhf.ppo.outputs import SUMMARY_FILE, OutputLayout, export_artifacts, save_merged_model, save_policy_adapter

__all__ = ["SUMMARY_FILE", "OutputLayout", "export_artifacts", "save_merged_model", "save_policy_adapter",
           "run_dir_beside"]


def run_dir_beside(policy_adapter: str) -> str:
    """Where a pipeline's DPO run lives: beside its policy adapter artifact, so a restarted task on
    the same outputs resumes from the run's checkpoints."""
    return storage.join(policy_adapter.rstrip("/").rsplit("/", 1)[0], "dpo_run")
