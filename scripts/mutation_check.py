#!/usr/bin/env python
"""Break each PPO / reward-model mechanism on purpose and check that the mechanism tests notice.

    .venv/bin/python scripts/mutation_check.py              # every mutation (a few minutes)
    .venv/bin/python scripts/mutation_check.py --list       # the mutations and the tests meant to catch them
    .venv/bin/python scripts/mutation_check.py --only kl-   # the mutations whose id starts with "kl-"
    .venv/bin/python scripts/mutation_check.py --keep       # keep the temporary copy (its path is printed)

Not part of CI. The working tree is never touched: the files `git ls-files` lists (tracked, plus
untracked files that are not ignored), as they are in the working tree now, are copied into a
temporary directory; each mutation (one exact source snippet replaced) is applied there, the
mechanism tests (`MECHANISM_TESTS`) run there with this repository's `.venv/bin/python -m pytest`,
and the file is restored before the next one. The copy's `rlhf` must be the one imported (the
venv has the project installed in editable mode pointing at the main tree): pytest runs with the
copy as its working directory and on PYTHONPATH, and a small plugin refuses to run if `rlhf`
comes from anywhere else.

A mutation is *caught* when every test listed for it fails (other tests failing as well is fine
and is reported). It is NOT CAUGHT when one of them passes, and "snippet no longer found" when the
source moved on (update the snippet). A baseline run first checks that the unmutated copy passes.
Exit status: 0 when every mutation is caught, 1 otherwise, 2 when the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
MECHANISM_TESTS = ["tests/test_ppo_mechanisms.py", "tests/test_reward_mechanisms.py"]

PPO = "tests/test_ppo_mechanisms.py::"
RWD = "tests/test_reward_mechanisms.py::"
STEP_REWARDS = [PPO + f"test_step_rewards_are_minus_beta_kl_plus_normalized_score_on_the_last_token[{p}]"
                for p in ("head-False", "head-True", "adapter-False")]
KL_NEAR_REF = PPO + "test_kl_penalty_keeps_the_policy_near_the_reference"
ADAPTIVE_ABOVE = PPO + "test_adaptive_kl_moves_the_coefficient_toward_the_target[kl_above_target]"
ADAPTIVE_BELOW = PPO + "test_adaptive_kl_moves_the_coefficient_toward_the_target[kl_below_target]"
RATIO_CLIP = PPO + "test_policy_ratio_clip_stops_the_update_outside_the_trust_region[True]"
VALUE_CLIP = PPO + "test_value_clip_stops_the_value_update_beyond_the_clip_range[True]"
ENTROPY = PPO + "test_entropy_bonus_raises_the_policy_entropy"
EOS_PENALTY = PPO + "test_missing_eos_penalty_lowers_only_responses_without_eos[1.5]"
REWARD_ADAPTER = PPO + "test_reward_scores_come_from_the_reward_adapter_not_the_policy"
BT_RAISES = RWD + "test_a_step_raises_the_chosen_minus_rejected_margin"
BT_LOSS = [RWD + f"test_the_step_minimizes_bradley_terry_with_its_margin[{m}]" for m in ("0.0", "1.5")]
MARGIN_PUSH = RWD + "test_a_margin_makes_the_step_push_harder_on_pairs_inside_it"
SAVED_NORM = RWD + "test_saved_normalization_is_the_mean_and_std_of_training_rewards"


@dataclass
class Mutation:
    id: str
    description: str
    path: str             # relative to the repository root
    snippet: str          # must occur exactly once in the file
    replacement: str
    catchers: list        # pytest node ids that must fail


MUTATIONS = [
    # -- the KL penalty and its controller (rlhf/ppo/trainer.py, rlhf/ppo/kl.py) --
    Mutation("kl-sign", "KL penalty sign flipped (the policy is paid to leave the reference)",
             "rlhf/ppo/trainer.py", "non_score = -self.kl_ctl.value * kl", "non_score = self.kl_ctl.value * kl",
             STEP_REWARDS + [KL_NEAR_REF]),
    Mutation("kl-dropped", "KL penalty dropped from the per-token rewards",
             "rlhf/ppo/trainer.py", "rewards = non_score.clone()", "rewards = torch.zeros_like(non_score)",
             STEP_REWARDS + [KL_NEAR_REF]),
    Mutation("kl-adaptive-direction", "adaptive KL update direction flipped",
             "rlhf/ppo/kl.py", "self.value *= 1.0 + proportional_error", "self.value *= 1.0 - proportional_error",
             [ADAPTIVE_ABOVE, ADAPTIVE_BELOW]),
    Mutation("kl-adaptive-input", "adaptive KL controller fed the KL with the wrong sign",
             "rlhf/ppo/trainer.py", "self.kl_ctl.update(seq_kl,", "self.kl_ctl.update(-seq_kl,",
             [ADAPTIVE_ABOVE]),
    # -- whitening --
    Mutation("adv-whiten-removed", "advantage whitening removed",
             "rlhf/ppo/trainer.py", "advantages = masked_whiten(advantages, mask)", "advantages = advantages",
             STEP_REWARDS),
    Mutation("reward-whiten-ignored", "whiten_rewards=True ignored",
             "rlhf/ppo/trainer.py", "if cfg.whiten_rewards:", "if False:",
             [STEP_REWARDS[1]]),
    Mutation("reward-whiten-forced", "rewards whitened although whiten_rewards=False",
             "rlhf/ppo/trainer.py", "if cfg.whiten_rewards:", "if True:",
             [STEP_REWARDS[0], STEP_REWARDS[2]]),
    Mutation("reward-whiten-shifts-mean", "reward whitening also removes the mean (can flip a reward's sign)",
             "rlhf/ppo/trainer.py", "masked_whiten(rewards, mask, shift_mean=False)", "masked_whiten(rewards, mask)",
             [STEP_REWARDS[1]]),
    # -- the PPO losses (rlhf/ppo/losses.py) and how the step uses them --
    Mutation("ratio-clip-removed", "policy ratio clip removed",
             "rlhf/ppo/losses.py", "clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)",
             "clipped = -advantages * ratio", [RATIO_CLIP]),
    Mutation("ratio-clip-not-passed", "the step ignores cliprange",
             "rlhf/ppo/trainer.py", "advantages, mask, cfg.cliprange)", "advantages, mask, 1e9)", [RATIO_CLIP]),
    Mutation("value-clip-removed", "value loss clip removed",
             "rlhf/ppo/losses.py", "torch.maximum(unclipped_loss, clipped_loss)", "unclipped_loss", [VALUE_CLIP]),
    Mutation("value-clip-not-passed", "the step ignores cliprange_value",
             "rlhf/ppo/trainer.py", "returns, mask, cfg.cliprange_value)", "returns, mask, 1e9)", [VALUE_CLIP]),
    Mutation("entropy-sign-step", "entropy bonus sign flipped in the step (a penalty)",
             "rlhf/ppo/trainer.py", "loss = loss + cfg.ent_coef * ent_loss", "loss = loss - cfg.ent_coef * ent_loss",
             [ENTROPY]),
    Mutation("entropy-sign-loss", "entropy loss sign flipped",
             "rlhf/ppo/losses.py", "return -masked_mean(entropy, mask)", "return masked_mean(entropy, mask)",
             [ENTROPY]),
    # -- scores --
    Mutation("eos-penalty-dropped", "missing-EOS penalty dropped",
             "rlhf/ppo/trainer.py",
             "scores = scores - self.cfg.missing_eos_penalty * (~rollout.ended).to(scores.dtype)", "scores = scores",
             [EOS_PENALTY] + STEP_REWARDS),
    Mutation("eos-penalty-inverted", "missing-EOS penalty charged to responses that did end",
             "rlhf/ppo/trainer.py", "(~rollout.ended).to(scores.dtype)", "rollout.ended.to(scores.dtype)",
             [EOS_PENALTY] + STEP_REWARDS),
    # -- which weights compute what (rlhf/ppo/policy.py, rlhf/ppo/reward.py) --
    Mutation("reference-adapter-on", "reference log-probs computed with the policy adapter on",
             "rlhf/ppo/policy.py", "with torch.no_grad(), self.reference():", "with torch.no_grad():",
             STEP_REWARDS + [KL_NEAR_REF]),
    Mutation("reference-value-adapter", "reference computed with the value adapter on (not every adapter off)",
             "rlhf/ppo/policy.py", "with torch.no_grad(), self.reference():",
             "with torch.no_grad(), self.adapter(VALUE):",
             [STEP_REWARDS[2]]),
    Mutation("reward-policy-adapter", "reward model scored with the policy adapter",
             "rlhf/ppo/policy.py", "with torch.no_grad(), self.adapter(REWARD):",
             "with torch.no_grad(), self.adapter(POLICY):",
             STEP_REWARDS + [REWARD_ADAPTER]),
    Mutation("reward-norm-dropped", "reward normalization dropped in PPO",
             "rlhf/ppo/policy.py", "scores = (scores - mean) / std", "scores = scores",
             STEP_REWARDS + [REWARD_ADAPTER]),
    Mutation("reward-norm-not-loaded", "PPO ignores the mean/std saved with the reward model",
             "rlhf/ppo/reward.py", "mean, std = outputs.normalization(info)", "mean, std = 0.0, 1.0",
             STEP_REWARDS + [REWARD_ADAPTER]),
    # -- the reward model (rlhf/reward/losses.py, rlhf/reward/trainer.py) --
    Mutation("bt-sign", "Bradley-Terry sign flipped (rejected preferred)",
             "rlhf/reward/losses.py", "F.logsigmoid(r_chosen - r_rejected - margin)",
             "F.logsigmoid(r_rejected - r_chosen - margin)", [BT_RAISES] + BT_LOSS),
    Mutation("bt-margin-dropped", "Bradley-Terry margin dropped from the loss",
             "rlhf/reward/losses.py", "F.logsigmoid(r_chosen - r_rejected - margin)",
             "F.logsigmoid(r_chosen - r_rejected)", [BT_LOSS[1], MARGIN_PUSH]),
    Mutation("bt-margin-not-passed", "the reward step does not pass its margin to the loss",
             "rlhf/reward/trainer.py", "bradley_terry_loss(rc, rr, config.margin,", "bradley_terry_loss(rc, rr, 0.0,",
             [BT_LOSS[1], MARGIN_PUSH]),
    Mutation("norm-chosen-only", "saved normalization computed over chosen responses only",
             "rlhf/reward/trainer.py", "scores = np.concatenate([rc, rr])", "scores = rc", [SAVED_NORM]),
    Mutation("norm-std-not-saved", "saved normalization std replaced by 1",
             "rlhf/reward/trainer.py", '"std": float(scores.std())', '"std": 1.0', [SAVED_NORM]),
]

# Loaded into the pytest run with -p: stops it when `rlhf` is not the copy's.
ORIGIN_PLUGIN = '''
import os
import pytest


def pytest_configure(config):
    import rlhf
    root = os.path.realpath(os.environ["MUTATION_COPY_ROOT"])
    where = os.path.realpath(rlhf.__file__)
    if not where.startswith(root + os.sep):
        raise pytest.UsageError(f"rlhf was imported from {where}, not from the copy {root}")
'''
PLUGIN_NAME = "_mutation_origin_check"


def tree_files(root: str) -> list[str]:
    """Tracked files and untracked non-ignored ones (read-only git command)."""
    out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    return sorted({p for p in out.split("\0") if p})


def make_copy(root: str) -> str:
    dest = tempfile.mkdtemp(prefix="rlhf-mutation-")
    for rel in tree_files(root):
        src = os.path.join(root, rel)
        if not os.path.isfile(src):  # deleted in the working tree, or a submodule directory
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
    with open(os.path.join(dest, PLUGIN_NAME + ".py"), "w") as f:
        f.write(ORIGIN_PLUGIN)
    return dest


def run_tests(copy: str, timeout: int) -> tuple[int, set[str], str]:
    """pytest on the mechanism tests inside the copy: (exit code, failed node ids, output)."""
    env = dict(os.environ, PYTHONPATH=copy, MUTATION_COPY_ROOT=copy, PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1")
    cmd = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", PLUGIN_NAME, "-rfE",
           "-W", "ignore", *MECHANISM_TESTS]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return 124, set(), f"timed out after {timeout} s\n{e.stdout or ''}"
    failed = set()
    for line in proc.stdout.splitlines():
        for prefix in ("FAILED ", "ERROR "):
            if line.startswith(prefix):
                failed.add(line[len(prefix):].split(" - ")[0].strip())
    return proc.returncode, failed, proc.stdout + proc.stderr


def check_origin(copy: str) -> str:
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([PYTHON, "-c", "import rlhf; print(rlhf.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.realpath(where).startswith(os.path.realpath(copy) + os.sep):
        sys.exit(f"rlhf imports from {where}, not from the copy {copy}: the mutations would not be tested")
    return where


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", default="", help="run only mutations whose id starts with this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per pytest run")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if m.id.startswith(args.only)]
    if args.list:
        for m in mutations:
            print(f"{m.id:28} {m.path}: {m.description}")
            for node in m.catchers:
                print(f"{'':28}   {node}")
        return 0
    if not mutations:
        sys.exit(f"no mutation id starts with {args.only!r} (see --list)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the copy
    copy = make_copy(ROOT)
    try:
        print(f"copy of the working tree: {copy}")
        print(f"rlhf imported from: {check_origin(copy)}")
        t0 = time.perf_counter()
        code, failed, output = run_tests(copy, args.timeout)
        print(f"baseline: exit {code} in {time.perf_counter() - t0:.0f} s")
        if code != 0:
            print(output[-4000:])
            print("the mechanism tests do not pass on the unmutated copy: nothing to measure")
            return 2

        results = []
        for m in mutations:
            path = os.path.join(copy, m.path)
            original = open(path).read() if os.path.exists(path) else ""
            count = original.count(m.snippet)
            if count != 1:
                status = "snippet no longer found" if count == 0 else f"snippet found {count} times"
                results.append((m, status, set()))
                print(f"[{status}] {m.id}: {m.description} ({m.path})")
                continue
            with open(path, "w") as f:
                f.write(original.replace(m.snippet, m.replacement))
            try:
                t0 = time.perf_counter()
                code, failed, output = run_tests(copy, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            missed = [n for n in m.catchers if n not in failed]
            if code == 124:
                status = "NOT CAUGHT (timeout)"
            elif code not in (0, 1):
                status = f"NOT CAUGHT (pytest exit {code})"
            else:
                status = "caught" if not missed else "NOT CAUGHT"
            results.append((m, status, failed))
            print(f"[{status}] {m.id}: {m.description} ({m.path}, {time.perf_counter() - t0:.0f} s)")
            for node in sorted(failed):
                print(f"    failed: {node}{'' if node in m.catchers else '  (also)'}")
            for node in missed:
                print(f"    PASSED, expected to fail: {node}")
            if code not in (0, 1):
                print(output[-2000:])
        caught = sum(status == "caught" for _, status, _ in results)
        print(f"\nscore: {caught}/{len(results)} mutations caught")
        return 0 if caught == len(results) else 1
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
