"""The demonstrations SFT learns from: the rows of an sft dataset, or, when none is given, the
preferred candidates of the preference data (``preferred_examples``)."""

from __future__ import annotations

import json
import logging
from typing import Sequence

from rlhf.data.canonical import PreferencePair, SFTExample
from rlhf.errors import UserError

log = logging.getLogger(__name__)


def preferred_examples(pairs: Sequence[PreferencePair]) -> list[SFTExample]:
    """One demonstration per prompt and preferred response: for each prompt (conversation and
    instruction), the chosen responses that no pair of that prompt rejects (ranked data: the best
    candidate only, not every pair's winner), each once, in the data's order. When a prompt's
    preferences form a cycle, so that every chosen response is also rejected somewhere, each of its
    distinct chosen responses is kept."""
    by_prompt: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        key = json.dumps([pair.messages, pair.instruction or None], sort_keys=True, ensure_ascii=False)
        by_prompt.setdefault(key, []).append(pair)
    out = []
    for group in by_prompt.values():
        rejected = {p.rejected.strip() for p in group}
        winners = [p for p in group if p.chosen.strip() not in rejected] or group
        seen: set[str] = set()
        for p in winners:
            if p.chosen.strip() not in seen:
                seen.add(p.chosen.strip())
                out.append(SFTExample(messages=p.messages, response=p.chosen, source=p.source,
                                      instruction=p.instruction))
    return out


def load_examples(sft_dataset: str, preference_dataset: str = "", instruction: str = "") -> list[SFTExample]:
    """The demonstrations: ``sft_dataset`` (canonical or any sft format validation accepts; a bad row
    is a UserError naming file:line), else the preferred candidates of ``preference_dataset``."""
    if sft_dataset:
        from rlhf.data.rows import load_rows
        return load_rows(sft_dataset, "sft", instruction)
    if not preference_dataset:
        raise UserError("no demonstrations: give --sft-dataset, or --preference-dataset to fine-tune on its "
                        "preferred candidates")
    from rlhf.reward.data import load_datasets
    pairs, _ = load_datasets(preference_dataset, "", instruction)
    examples = preferred_examples(pairs)
    log.info("SFT on the preferred candidates of %s: %d demonstrations from %d pairs", preference_dataset,
             len(examples), len(pairs))
    return examples
