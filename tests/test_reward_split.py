"""The reward model's (and DPO's, SFT's) held-out split."""

import numpy as np

from rlhf.reward.data import split_heldout


# -- held-out split ------------------------------------------------------------------------------

def test_grouped_heldout_split_never_shares_a_prompt_with_training():
    """Ranked feedback gives ten pairs per prompt; a split through a prompt's pairs would score the
    reward model on prompts it trained on."""
    groups = [f"post{i // 10}" for i in range(400)]  # 40 prompts x 10 pairs
    train, held = split_heldout(len(groups), 0.1, 1000, seed=3, groups=groups)
    assert len(held) == 40 and len(train) == 360
    assert {groups[i] for i in held}.isdisjoint({groups[i] for i in train})
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(400))
    other_seed = split_heldout(len(groups), 0.1, 1000, seed=4, groups=groups)[1]
    assert set(held.tolist()) != set(other_seed.tolist())


def test_grouped_split_with_distinct_keys_is_the_plain_split():
    plain = split_heldout(50, 0.2, 1000, seed=0)
    grouped = split_heldout(50, 0.2, 1000, seed=0, groups=[f"p{i}" for i in range(50)])
    assert all((a == b).all() for a, b in zip(plain, grouped))
