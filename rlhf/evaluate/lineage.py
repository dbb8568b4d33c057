"""Whether the tuned policy's base is an SFT model, and so whether evaluation compares three models.

In the pipeline the SFT model (``rlhf sft``'s merged model) is the base of PPO/DPO: the tuned adapter
sits on it and PPO's KL penalty is measured against it. Its directory records what it was fine-tuned
from (``rlhf.sft.provenance``); evaluation then generates with the original base, the SFT model and
the tuned policy on the same prompts, with the same decoding and seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from rlhf import models
from rlhf.errors import UserError
from rlhf.sft.provenance import RECORD_FILE, read_sft_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTLineage:
    sft_model: str       # the tuned policy's base: what it started from and its KL reference
    original_base: str   # what the SFT model was fine-tuned from
    source: str          # how it was found: the record or the flag


def find_lineage(config, base_reference: str) -> tuple[Optional[SFTLineage], Optional[str]]:
    """(the lineage of ``base_reference`` when an SFT comparison applies, else None; a note for the
    report when a recorded base cannot be used). ``config``: an ``EvalConfig``. A ``--sft-base-model``
    that does not resolve is a UserError; a recorded base that does not resolve here (a path on
    another machine) drops the comparison with a note, as an adapter's unresolvable base does."""
    if not config.sft_comparison:
        return None, None
    if config.sft_base_model:
        models.resolve_model(config.sft_base_model)  # a wrong reference fails before any model loads
        return SFTLineage(base_reference, config.sft_base_model, "--sft-base-model"), None
    record = read_sft_record(base_reference)
    if record is None:
        return None, None
    original = str(record["base_model"])
    try:
        models.resolve_model(original)
    except UserError as e:
        note = (f"the base model {base_reference} is an SFT model of {original}, which does not resolve here "
                f"({str(e).splitlines()[0]}): compared with the SFT model only; pass --sft-base-model to "
                f"compare with the original base too")
        log.warning(note)
        return None, note
    return SFTLineage(base_reference, original, RECORD_FILE), None
