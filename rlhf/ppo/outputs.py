"""What a PPO run leaves in its output directory, and how each piece is written (atomically).

    <output_dir>/
      policy_adapter/            adapter_config.json + adapter_model.safetensors (peft; load with
                                 PeftModel.from_pretrained(base, dir)), value_head.safetensors,
                                 ppo_config.json (settings, base model, tokenizer ids)
      merged_model/              optional: the policy merged into the base, Hugging Face format
      metrics.jsonl              one JSON object per step (namespaced names, as in TensorBoard)
      summary.json               last value of every metric (what KFP Metrics gets); written
                                 last: a directory that has it is complete
      tensorboard/               event files
      samples/step-00000050.jsonl  sample generations at each checkpoint
      checkpoints/step-00000050/   for exact resume (rlhf.checkpoint, rlhf.rundir)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterable, Optional

from rlhf import storage
from rlhf.rundir import publish_dir


def run_dir_beside(policy_adapter: str) -> str:
    """Where a pipeline's PPO run lives: beside its policy adapter artifact (local, /gcs/ or gs://),
    so a restarted task or job on the same outputs resumes from the run's checkpoints."""
    return storage.join(policy_adapter.rstrip("/").rsplit("/", 1)[0], "ppo_run")

# Written last (rlhf.rundir.RunDir.publish): a run directory that has it is complete.
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class OutputLayout:
    root: str
    checkpoints: Optional[str] = None  # default <root>/checkpoints (a gs:// run keeps them remote)

    def _p(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def adapter_dir(self) -> str:
        return self._p("policy_adapter")

    @property
    def merged_dir(self) -> str:
        return self._p("merged_model")

    @property
    def metrics_path(self) -> str:
        return self._p("metrics.jsonl")

    @property
    def summary_path(self) -> str:
        return self._p(SUMMARY_FILE)

    @property
    def tensorboard_dir(self) -> str:
        return self._p("tensorboard")

    @property
    def samples_dir(self) -> str:
        return self._p("samples")

    @property
    def checkpoints_dir(self) -> str:
        return self.checkpoints or self._p("checkpoints")

    def samples_path(self, step: int) -> str:
        return self._p("samples", f"step-{step:08d}.jsonl")


def save_policy_adapter(model, uri: str, config, base_model: str, tokenizer) -> None:
    """The trained policy adapter (peft layout, safetensors), the value head and the settings."""
    from safetensors.torch import save_file
    from rlhf.ppo.policy import POLICY
    with tempfile.TemporaryDirectory(prefix="rlhf-adapter-") as tmp:
        model.peft.save_pretrained(tmp, selected_adapters=[POLICY], safe_serialization=True)
        # peft puts a non-default adapter in a subfolder named after it; flatten so the directory
        # itself loads with PeftModel.from_pretrained.
        out = os.path.join(tmp, "out")
        shutil.move(os.path.join(tmp, POLICY), out)
        cfg_path = os.path.join(out, "adapter_config.json")
        with open(cfg_path) as f:
            adapter_cfg = json.load(f)
        adapter_cfg["base_model_name_or_path"] = base_model
        with open(cfg_path, "w") as f:
            json.dump(adapter_cfg, f, indent=2)
        save_file({k.removeprefix("value_head."): v.detach().cpu().contiguous()
                   for k, v in model.value_head.state_dict(keep_vars=True).items()},
                  os.path.join(out, "value_head.safetensors"))
        with open(os.path.join(out, "ppo_config.json"), "w") as f:
            json.dump({"base_model": base_model, "value_model": model.value_model,
                       "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                       "config": dataclasses.asdict(config)}, f, indent=2, sort_keys=True)
        publish_dir(out, uri)


def save_merged_model(model, uri: str, tokenizer, records: Optional[dict[str, dict]] = None) -> None:
    """The policy merged into the base weights, ready for serving. Consumes ``model`` (the merge
    rewrites the shared base weights, so the reference is gone): call it last. ``records``: file name
    -> JSON written into the directory with the weights (e.g. ``rlhf.sft.provenance``'s record)."""
    from rlhf.ppo.policy import POLICY
    merged = model.peft.merge_and_unload(adapter_names=[POLICY])
    with tempfile.TemporaryDirectory(prefix="rlhf-merged-") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, record in (records or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(record, f, indent=2, sort_keys=True)
        publish_dir(tmp, uri)


def write_samples(uri: str, rows: Iterable[dict]) -> None:
    with storage.open_write(uri, "wt") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def export_artifacts(run_dir: str, adapter_uri: str, tensorboard_uri: Optional[str] = None,
                     samples_uri: Optional[str] = None) -> None:
    """Copy a finished run's adapter, TensorBoard logs and samples to separate locations (the KFP
    component's output artifacts)."""
    layout = OutputLayout(run_dir)
    for src, dst in ((layout.adapter_dir, adapter_uri), (layout.tensorboard_dir, tensorboard_uri),
                     (layout.samples_dir, samples_uri)):
        if dst:
            export_dir(src, dst)


def export_dir(src: str, uri: str) -> bool:
    """Copy the directory ``src`` (local or gs://) to ``uri``, whole, never half (``publish_dir``);
    False when a local ``src`` does not exist."""
    if storage.is_gcs(src):
        with tempfile.TemporaryDirectory(prefix="rlhf-export-") as tmp:
            storage.download_dir(src, tmp)
            publish_dir(tmp, uri)
    elif os.path.isdir(src):
        publish_dir(src, uri)
    else:
        return False
    return True
