"""Writing and reading a trained reward model directory (layout in ``rlhf.reward``'s docstring)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Optional

from rlhf import storage
from rlhf.errors import UserError

INFO_FILE = "reward_model.json"
SCORE_HEAD_FILE = "score_head.safetensors"
FORMAT = "rlhf-reward-model/1"


def write_model(model, tokenizer, out_dir: str, merged: bool = False,
                base_model: Optional[str] = None) -> None:
    """Write adapter + score head + tokenizer (+ merged model) into local ``out_dir``, without the
    info file (``rlhf.rundir.RunDir.publish`` or ``save`` writes that last). Files are built in a
    temporary directory beside them and moved in. ``base_model``: the reference recorded in
    ``adapter_config.json`` (as given, not the resolved local path)."""
    from safetensors.torch import save_file
    from rlhf.reward.modeling import parts
    if base_model:
        model.peft_config["default"].base_model_name_or_path = base_model
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
        for name in os.listdir(tmp):
            target = os.path.join(out_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, name), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def complete_info(info: dict, merged: bool) -> dict:
    """``info`` plus the fields every reward model's info file has (format, file names)."""
    return {**info, "format": FORMAT, "score_head": SCORE_HEAD_FILE,
            "adapter": "adapter_model.safetensors", "merged": "merged" if merged else None}


def model_info(config, model, use_chat_template: bool, normalization: dict, metrics: dict,
               classes=()) -> dict:
    """The info file of a model trained with ``config`` (a RewardConfig): what a reader needs to
    encode inputs as training did, normalize rewards, and know how it was trained. A classifier's
    also has ``labels`` (class index -> name), ``positive_label`` and ``reward_from``."""
    from rlhf import models
    from rlhf.reward.metrics import scalar_metrics
    kind = {"reward_model_type": config.reward_model_type}
    if config.classifier:
        kind.update(labels=list(classes), positive_label=config.positive_label, reward_from=config.reward_from)
    return complete_info({**kind,
        "base_model": config.large_model_reference,
        "base_model_resolved": models.resolve_model(config.large_model_reference),
        "architecture": type(model.get_base_model()).__name__,
        "prompt_sequence_length": config.prompt_sequence_length,
        "target_sequence_length": config.target_sequence_length,
        "use_chat_template": use_chat_template,
        "instruction": config.instruction,
        "response_encoding": "prompt tokens, then response tokens, then EOS; reward read at the last token",
        "normalization": normalization,
        "lora": {"r": config.reward_lora_dim, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": sorted(model.peft_config["default"].target_modules or [])},
        "train_steps": config.reward_model_train_steps,
        "pairs_per_step": config.pairs_per_step,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "metrics": scalar_metrics(metrics),
    }, merged=config.save_merged_model)


def save(model, tokenizer, out_dir: str, info: dict, merged: bool = False) -> None:
    """A complete reward model directory in local ``out_dir``: the model files, then
    ``reward_model.json`` last, so a directory that has it is complete."""
    if os.path.exists(os.path.join(out_dir, INFO_FILE)):
        os.remove(os.path.join(out_dir, INFO_FILE))  # incomplete until rewritten below
    write_model(model, tokenizer, out_dir, merged=merged)
    storage.write_json(os.path.join(out_dir, INFO_FILE), complete_info(info, merged))


def classifier_labels(model_dir: str) -> Optional[list[str]]:
    """Class names by index of the Hugging Face sequence classifier in ``model_dir`` (its
    ``config.json``: a *ForSequenceClassification architecture and ``id2label``), else None."""
    path = storage.join(model_dir, "config.json")
    try:
        config = storage.read_json(path) if storage.exists(path) else {}
    except ValueError:
        return None
    id2label = config.get("id2label") if isinstance(config, dict) else None
    if not id2label or not any(str(a).endswith("ForSequenceClassification")
                               for a in config.get("architectures") or []):
        return None
    return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]


def read_info(model_dir: str) -> dict:
    """``reward_model.json`` of a trained reward model, or for an existing Hugging Face sequence
    classifier an info of ``reward_model_type`` ``hf_classifier`` with its ``labels``; UserError when
    it is neither."""
    path = storage.join(model_dir, INFO_FILE)
    if not storage.exists(path):
        labels = classifier_labels(model_dir)
        if labels:
            return complete_info({"reward_model_type": "hf_classifier", "base_model": model_dir,
                                  "labels": labels}, merged=False)
        raise UserError(f"{model_dir} is not a trained reward model (no {INFO_FILE}) nor a Hugging Face "
                        f"sequence classifier (config.json with id2label and a *ForSequenceClassification "
                        f"architecture): give the output directory of `rlhf train-reward` / the reward "
                        f"model artifact, or a classifier's directory")
    info = storage.read_json(path)
    if info.get("format") != FORMAT:
        raise UserError(f"{path}: unknown reward model format {info.get('format')!r} (expected {FORMAT})")
    return info


def local_copy(model_dir: str) -> str:
    """A local directory with the model files (``gs://`` directories are downloaded)."""
    if not storage.is_gcs(model_dir):
        return model_dir
    local = tempfile.mkdtemp(prefix="rlhf-reward-model-")
    # The process reads it for its whole life (a scorer may reload it); gone when the process ends.
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    storage.download_dir(model_dir, local)
    return local


def normalization(info: dict) -> tuple[float, float]:
    stats: Optional[dict] = info.get("normalization")
    if not stats:
        return 0.0, 1.0
    return float(stats["mean"]), max(float(stats["std"]), 1e-6)
