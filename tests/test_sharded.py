"""The reward step with its frozen base sharded over 2 gloo processes (FSDP2, `--shard-base`), on CPU,
against the same 2-process run replicated (DDP).

The sharded run computes what the replicated one does: the same shares of every micro-batch, the
same base weights (gathered per layer around each forward and backward), the trainable LoRA and head
parameters whole on both processes and their gradients averaged by one all-reduce (DDP's bucketed
all-reduce in the replicated run). Only summation order differs, so metrics and weights agree to
1e-5 (absolute) after 6 steps. It writes the same files, and a killed sharded run resumes to the
uninterrupted sharded result (1e-6). PPO and evaluation likewise (below): sharded PPO against the
replicated run and resumed after a kill, sharded evaluation against one process, and the decoding
loops kept in step when one process's responses end before the other's.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from test_eval_inference import POSTS, tiny  # noqa: F401  (fixture)
from test_multiprocess import (_run_killed_after, close, history, no_strays, ppo_setup, ppo_state,  # noqa: F401
                               reward_args, reward_inputs, reward_weights, run_rlhf, tune_args, weights_close)
from test_reward_helpers import write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def files(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and "tensorboard" not in p.parts)


def test_sharded_reward_run_matches_replicated_and_resumes(reward_inputs, tmp_path):
    replicated, sharded, killed = tmp_path / "replicated", tmp_path / "sharded", tmp_path / "killed"
    run_rlhf(reward_args(reward_inputs, replicated, 2) + ["--save-merged-model"])
    done = run_rlhf(reward_args(reward_inputs, sharded, 2) + ["--save-merged-model", "--shard-base"])
    assert "frozen base sharded over 2 processes" in done.stderr

    assert files(replicated) == files(sharded)
    no_strays(sharded)
    close(history(replicated / "metrics.jsonl"), history(sharded / "metrics.jsonl"), atol=1e-5)
    weights_close(reward_weights(replicated), reward_weights(sharded), atol=1e-5)
    for name in ("score_head.safetensors", "merged/model.safetensors"):
        weights_close(load_file(str(replicated / name)), load_file(str(sharded / name)), atol=1e-5)
    for step in ("step-00000004", "step-00000006"):
        weights_close(load_file(str(replicated / "checkpoints" / step / "trainable.safetensors")),
                      load_file(str(sharded / "checkpoints" / step / "trainable.safetensors")), atol=1e-5)
    info1, info2 = (json.loads((d / "reward_model.json").read_text()) for d in (replicated, sharded))
    for key in ("mean", "std"):
        assert info1["normalization"][key] == pytest.approx(info2["normalization"][key], abs=1e-5)

    args = reward_args(reward_inputs, killed, 2) + ["--save-merged-model", "--shard-base"]
    _run_killed_after(args, killed / "checkpoints" / "step-00000002" / "state.json")
    assert not (killed / "reward_model.json").exists()
    again = run_rlhf(args)
    assert json.loads(again.stdout[again.stdout.index("{"):])["resumed_from"] >= 2
    close(history(sharded / "metrics.jsonl"), history(killed / "metrics.jsonl"), atol=1e-6)
    weights_close(reward_weights(sharded), reward_weights(killed), atol=1e-6)
    no_strays(killed)
    assert os.path.exists(killed / "merged" / "model.safetensors")



def test_sharded_ppo_matches_replicated_and_resumes(ppo_setup, tmp_path):
    """PPO with the base sharded against the same 2-process run replicated: the same rollouts (top_k=1),
    the same passes, the LoRA and value-head gradients averaged by one all-reduce instead of DDP's, and
    log-probs from the model's own logits instead of the fused head (equal to 8 ulps, checked at
    load): only rounding differs, measured at 1.5e-6 in metrics and 2e-8 in weights after 3 steps, so
    1e-5 holds with room and still catches a wrong average (a sum is 2x) or a rollout out of step."""
    replicated, sharded, killed = tmp_path / "replicated", tmp_path / "sharded", tmp_path / "killed"
    run_rlhf(tune_args(ppo_setup, replicated, 2, ["--save-merged-model"]))
    done = run_rlhf(tune_args(ppo_setup, sharded, 2, ["--save-merged-model", "--shard-base"]))
    assert "frozen base sharded over 2 processes" in done.stderr

    assert files(replicated) == files(sharded)
    no_strays(sharded)
    w1, m1 = ppo_state(replicated)
    w2, m2 = ppo_state(sharded)
    close(m1, m2, atol=1e-5)
    weights_close(w1, w2, atol=1e-5)
    weights_close(load_file(str(replicated / "merged_model" / "model.safetensors")),
                  load_file(str(sharded / "merged_model" / "model.safetensors")), atol=1e-5)
    for step in ("step-00000002", "step-00000003"):
        weights_close(load_file(str(replicated / "checkpoints" / step / "trainable.safetensors")),
                      load_file(str(sharded / "checkpoints" / step / "trainable.safetensors")), atol=1e-5)
    assert (replicated / "samples" / "step-00000003.jsonl").read_text() == \
        (sharded / "samples" / "step-00000003.jsonl").read_text()

    args = tune_args(ppo_setup, killed, 2, ["--save-merged-model", "--shard-base"])
    _run_killed_after(args, killed / "checkpoints" / "step-00000001" / "state.json")
    assert not (killed / "policy_adapter").exists()
    run_rlhf(args)
    w3, m3 = ppo_state(killed)
    close(m2, m3, atol=1e-6)
    weights_close(w2, w3, atol=1e-6)
    no_strays(killed)


def test_sharded_evaluation_writes_the_predictions_of_one_process(tiny, tmp_path):  # noqa: F811
    """5 prompts in batches of 2 over 2 processes: rank 0 decodes 2 batches, rank 1 one and a stand-in."""
    _, adapter_dir = tiny
    rows = [{"input_text": f"{POSTS[i % len(POSTS)]} ({i})", "instruction": "Summarize in less than 20 words.",
             "reference": f"Summary {i}."} for i in range(5)]
    data = write_jsonl(tmp_path / "eval.jsonl", rows)

    def args(out, devices, extra=()):
        return ["evaluate", "--eval-dataset", str(data), "--model", adapter_dir, "--output-dir", str(out),
                "--target-sequence-length", "6", "--batch-size", "2", "--device", "cpu", "--devices",
                str(devices), *extra]

    run_rlhf(args(tmp_path / "one", 1))
    done = run_rlhf(args(tmp_path / "sharded", 2, ["--shard-base"]))
    assert "models sharded over 2 processes" in done.stderr
    for name in ("base", "tuned"):
        one = (tmp_path / "one" / "predictions" / f"{name}.jsonl").read_text()
        two = (tmp_path / "sharded" / "predictions" / f"{name}.jsonl").read_text()
        assert one == two and len(two.splitlines()) == 5
    s1, s2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "sharded"))
    assert set(s1) == set(s2)
    for k in s1:
        if not k.startswith("time/"):
            assert s1[k] == pytest.approx(s2[k], abs=1e-5), k
    no_strays(tmp_path / "sharded")


# -- generation in step: a process whose responses ended keeps running forward passes -------------


def _generations_sharded_and_plain() -> list[dict]:
    """On each of 2 processes: its prompts decoded by the PPO rollout and by evaluation's bulk
    inference, plainly and then with the model sharded; every process's results, on rank 0. EOS is a
    token the greedy responses reach at different steps, so one process ends while the other decodes on."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlhf import distributed
    from rlhf.evaluate import inference
    from rlhf.evaluate.policies import PolicyPair
    from rlhf.ppo.rollout import generate
    from test_ppo_train import IdTokenizer, tiny_model

    rank, _, device = distributed.init("cpu")
    prompts = torch.tensor([[3, 4, 5], [9, 6, 7], [11, 12, 13], [8, 14, 10]])
    mask = torch.ones_like(prompts)
    out: dict = {}

    model = tiny_model(vocab=16, init=0.5)
    probe = generate(model, prompts, mask, 8, eos_token_id=-1, pad_token_id=0, top_k=1)
    eos = int(probe.response_ids[0, 0])
    out["ppo_probe"] = probe.response_ids.tolist()
    mine = slice(2 * rank, 2 * rank + 2)
    runs = {}
    for name in ("plain", "sharded"):
        if name == "sharded":
            assert model.shard_base(device)
        torch.manual_seed(7 + rank)
        r = generate(model, prompts[mine], mask[mine], 8, eos, pad_token_id=0, temperature=0.9, top_k=1)
        runs[name] = {"ids": r.response_ids, "logprobs": r.logprobs, "values": r.values, "ended": r.ended,
                      "after": torch.rand(3)}  # the random stream: no draw more or less
    out["ppo"], out["eos"] = runs, eos

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.5, tie_word_embeddings=True))
    tuned = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lm.generation_config.eos_token_id = eos
    pair = PolicyPair(tuned=tuned.eval(), tokenizer=IdTokenizer(), base_reference="tiny")
    settings = inference.GenerationSettings(max_new_tokens=8, batch_size=1)
    share = [p.tolist() for p in prompts[rank::2][: 2 - rank]]  # rank 0: 2 batches, rank 1: 1 + a stand-in
    evals = {}
    for name in ("plain", "sharded"):
        lockstep = dict(rounds=2, standin=[8, 14, 10]) if name == "sharded" else {}  # ends at once
        if name == "sharded":
            assert pair.shard(device)
        seen = []
        tuned_gen = inference.generate(pair.tuned, pair.tokenizer, share, settings,
                                       on_batch=lambda b: seen.append(b.indices), **lockstep)
        with pair.base() as base:
            base_gen = inference.generate(base, pair.tokenizer, share, settings, **lockstep)
        evals[name] = {"tuned": [g.response_ids for g in tuned_gen], "base": [g.response_ids for g in base_gen],
                       "batches": seen}
    out["eval"] = evals
    return distributed.gather(out)


def test_sharded_generation_runs_in_step_and_decodes_what_one_process_does():
    from rlhf import launch
    ranks = launch.launch(2, _generations_sharded_and_plain)
    eos = ranks[0]["eos"]
    assert ranks[0]["eos"] == ranks[1]["eos"]
    for rank, got in enumerate(ranks):
        plain, sharded = got["ppo"]["plain"], got["ppo"]["sharded"]
        assert torch.equal(plain["ids"], sharded["ids"]) and torch.equal(plain["ended"], sharded["ended"])
        for key in ("logprobs", "values", "after"):
            torch.testing.assert_close(plain[key], sharded[key], atol=1e-5, rtol=0)
        assert got["eval"]["plain"] == got["eval"]["sharded"] | {"batches": got["eval"]["plain"]["batches"]}
    # The case the lockstep exists for: one process's rows all ended (EOS) while the other's decoded on.
    widths = sorted(got["ppo"]["plain"]["ids"].shape[1] for got in ranks)
    assert widths[0] < widths[1] <= 8
    assert all(bool(got["ppo"]["plain"]["ended"].all()) for got in ranks
               if got["ppo"]["plain"]["ids"].shape[1] == widths[0])
    first = [len(got["eval"]["plain"]["base"][0]) for got in ranks]  # the batch both decode at once
    assert min(first) < max(first) and eos in ranks[first.index(min(first))]["eval"]["plain"]["base"][0]
    assert ranks[1]["eval"]["sharded"]["batches"] == [[0], []]  # its own batch, then a stand-in
