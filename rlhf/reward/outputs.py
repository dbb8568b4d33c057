"""Writing and reading a trained reward model directory (layout in ``rlhf.reward``'s docstring)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from rlhf import storage
from rlhf.errors import UserError

INFO_FILE = "reward_model.json"
SCORE_HEAD_FILE = "score_head.safetensors"
FORMAT = "rlhf-reward-model/1"


def save(model, tokenizer, out_dir: str, info: dict, merged: bool = False) -> None:
    """Write adapter + score head + tokenizer (+ merged model) into local ``out_dir``.
    Files are built in a temporary directory beside it and moved in; ``reward_model.json`` goes
    last, so a directory that has it is complete."""
    from safetensors.torch import save_file
    from rlhf.reward.modeling import parts
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=".tmp-model-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _, head = parts(model)
        # peft wraps the head (ModulesToSaveWrapper); the trained copy is modules_to_save["default"].
        head_module = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
        save_file({k: v.detach().float().cpu().contiguous() for k, v in head_module.state_dict().items()},
                  os.path.join(tmp, SCORE_HEAD_FILE))
        if merged:
            merged_model = model.merge_and_unload()
            merged_model.save_pretrained(os.path.join(tmp, "merged"), safe_serialization=True)
            tokenizer.save_pretrained(os.path.join(tmp, "merged"))
        info = {**info, "format": FORMAT, "score_head": SCORE_HEAD_FILE,
                "adapter": "adapter_model.safetensors", "merged": "merged" if merged else None}
        if os.path.exists(os.path.join(out_dir, INFO_FILE)):
            os.remove(os.path.join(out_dir, INFO_FILE))  # incomplete until rewritten below
        for name in os.listdir(tmp):
            target = os.path.join(out_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, name), target)
        storage.write_text(os.path.join(out_dir, INFO_FILE), json.dumps(info, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_info(model_dir: str) -> dict:
    """``reward_model.json`` of a trained reward model; UserError when it is not one."""
    path = storage.join(model_dir, INFO_FILE)
    if not storage.exists(path):
        raise UserError(f"{model_dir} is not a trained reward model (no {INFO_FILE}): give the "
                        f"output directory of `rlhf train-reward` / the reward model artifact")
    info = storage.read_json(path)
    if info.get("format") != FORMAT:
        raise UserError(f"{path}: unknown reward model format {info.get('format')!r} (expected {FORMAT})")
    return info


def local_copy(model_dir: str) -> str:
    """A local directory with the model files (``gs://`` directories are downloaded)."""
    if not storage.is_gcs(model_dir):
        return model_dir
    local = tempfile.mkdtemp(prefix="rlhf-reward-model-")
    storage.download_dir(model_dir, local)
    return local


def normalization(info: dict) -> tuple[float, float]:
    stats: Optional[dict] = info.get("normalization")
    if not stats:
        return 0.0, 1.0
    return float(stats["mean"]), max(float(stats["std"]), 1e-6)
