"""Where an SFT model came from: ``rlhf_sft.json`` inside its merged-model directory, written with the
weights (one atomic publish) so that it travels wherever the directory is copied. Evaluation reads it to
compare the tuned policy with both the SFT model it was tuned from and the original base.

    {"stage": "sft", "base_model": "<the original large_model_reference>", "demonstrations": "...",
     "steps": 500}
"""

from __future__ import annotations

import os
from typing import Optional

from rlhf import storage
from rlhf.errors import StorageError, UserError

RECORD_FILE = "rlhf_sft.json"


def sft_record(config, steps: int) -> dict:
    """The record of an SFT run (an ``SFTConfig``). A local base directory is made absolute: a relative
    path would mean something else to a step that runs elsewhere."""
    base = config.large_model_reference
    if not storage.is_gcs(base) and os.path.isdir(base):
        base = os.path.abspath(base)
    return {"stage": "sft", "base_model": base,
            "demonstrations": config.sft_dataset or config.preference_dataset, "steps": int(steps)}


def read_sft_record(model_ref: str) -> Optional[dict]:
    """The record in a model directory (local, /gcs/ or gs://), or None when it holds none (an alias, a
    Hugging Face id or any model that was not made by ``rlhf sft``)."""
    if not model_ref:
        return None
    path = storage.join(model_ref, RECORD_FILE)
    if not storage.exists(path):
        return None
    try:
        record = storage.read_json(path)
    except StorageError as e:
        raise UserError(f"{path}: {e}; it should be the record `rlhf sft` writes beside the merged model "
                        f"(delete it to evaluate without the SFT comparison)") from None
    if not isinstance(record, dict) or record.get("stage") != "sft" or not record.get("base_model"):
        raise UserError(f"{path}: not an SFT record (expected {{\"stage\": \"sft\", \"base_model\": ...}}); "
                        f"delete it to evaluate without the SFT comparison")
    return record
