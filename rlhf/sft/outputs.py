"""Where a pipeline's SFT run lives and how its merged model becomes the stage's output artifact.
The run directory itself is PPO's layout (``rlhf.ppo.outputs.OutputLayout``) with ``merged_model/``."""

from __future__ import annotations

from rlhf import storage
from rlhf.ppo.outputs import OutputLayout, export_dir


def run_dir_beside(sft_model: str) -> str:
    """Beside the merged-model artifact, so a restarted task on the same outputs resumes."""
    return storage.join(sft_model.rstrip("/").rsplit("/", 1)[0], "sft_run")


def export_merged_model(run_dir: str, uri: str) -> None:
    """Copy a finished run's merged model to ``uri`` (whole, never half: ``publish_dir``)."""
    src = OutputLayout(run_dir).merged_dir
    if not export_dir(src, uri):
        raise FileNotFoundError(f"{src}: the SFT run wrote no merged model")
