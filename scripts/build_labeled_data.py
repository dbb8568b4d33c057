#!/usr/bin/env python
"""Build the bundled labeled dataset (`rlhf/sample_data/labeled.jsonl`) for the classifier reward.

    python scripts/build_labeled_data.py

No model runs: every stored candidate summary of the preference posts (`source/candidates.jsonl`,
made by `scripts/build_sample_data.py`) becomes one row `{"input_text", "output_text", "label"}`,
labeled by the constitution judge (`rlhf.judge.judge`): 1 when the summary does not address the
poster (rule `voice` full marks) and invents little (rule `faithful` at least FAITHFUL: most
candidates of a 135M model invent something, so a perfect score would leave almost no positives), else 0. Only preference posts are used,
so the eval posts stay held out. Deterministic: the same judge gives the same file.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from rlhf import judge as J
from rlhf import storage
from rlhf.samples import INSTRUCTION, SAMPLE_DIR

sys.path.insert(0, str(SAMPLE_DIR.parents[1] / "scripts"))
import build_sample_data as S  # noqa: E402  (the posts, splits and candidates of the sample data)

LABELED = SAMPLE_DIR / "labeled.jsonl"
FAITHFUL = 0.3


def label(post: str, summary: str) -> int:
    """1: the summary reports the post (no "you should ...") and invents little; else 0."""
    rules = J.judge(post, summary, INSTRUCTION).rules
    return int(rules["voice"] >= 1 and rules["faithful"] >= FAITHFUL)


def rows(seed: int = 0) -> list[dict]:
    posts = S.read_posts()
    ids = set(S.split(list(posts), seed)["preference"])
    out = []
    for line in S.CANDIDATES.read_text(encoding="utf-8").splitlines():
        c = json.loads(line)
        if c["id"] in ids and c["text"].strip():
            post = posts[c["id"]]["text"]
            out.append({"input_text": post, "output_text": c["text"], "label": label(post, c["text"])})
    return out


def main() -> int:
    out = rows()
    with storage.open_write(str(LABELED), "wt") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} rows to {LABELED}: labels {dict(sorted(Counter(r['label'] for r in out).items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
