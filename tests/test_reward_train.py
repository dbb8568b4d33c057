"""Reward training end to end on a tiny model: it learns, only LoRA and the head train, outputs load
with peft and RewardScorer, and bad input fails before training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlhf import models
from rlhf.data.canonical import PreferencePair
from rlhf.errors import UserError
from rlhf.reward import batching
from rlhf.reward.config import RewardConfig
from rlhf.reward.modeling import build_reward_model
from rlhf.reward.scorer import RewardScorer
from rlhf.reward.setup import Collator, lr_lambda
from rlhf.reward.train import train_reward_model
from rlhf.reward.trainer import train_step
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    train = write_jsonl(d / "pref.jsonl", synthetic_rows(240, seed=1))
    # Eval data in a user format (TRL prompt/chosen/rejected): validated on the way in.
    raw = [{"prompt": r["messages"][0]["content"], "chosen": r["chosen"], "rejected": r["rejected"]}
           for r in synthetic_rows(30, seed=2)]
    return {"train": str(train), "eval": str(write_jsonl(d / "eval_raw.jsonl", raw))}


def _config(tiny, data, out, **kw) -> RewardConfig:
    base = dict(preference_dataset=data["train"], eval_dataset=data["eval"], output_dir=str(out),
                large_model_reference=tiny, reward_model_train_steps=24, batch_size=8,
                gradient_accumulation_steps=1, reward_model_learning_rate_multiplier=30,
                eval_every=12, log_every=12, checkpoint_every=0, lora_target_modules=["q_proj", "v_proj"],
                heldout_fraction=0.15)
    base.update(kw)
    return RewardConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "reward"
    return out, train_reward_model(_config(tiny, data, out))


def test_tiny_model_learns_easy_preferences(trained):
    out, result = trained
    m = result.metrics
    assert m["heldout/pairs"] == 35 and m["eval/pairs"] == 30
    assert m["heldout/accuracy"] >= 0.95 and m["eval/accuracy"] >= 0.95
    assert m["heldout/roc_auc"] >= 0.95 and m["eval/margin"] > 1.0
    assert m["loss/total"] < 0.3
    history = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, 25))
    assert "heldout/accuracy" in history[11] and "heldout/accuracy" not in history[10]
    assert history[-1]["loss/total"] < history[0]["loss/total"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_outputs_load_with_peft_and_the_scorer(trained, tiny):
    from peft import PeftModel
    out, result = trained
    info = json.loads((out / "reward_model.json").read_text())
    assert info["base_model"] == tiny and info["use_chat_template"] is True
    assert info["lora"]["target_modules"] == ["q_proj", "v_proj"] and info["lora"]["r"] == 4
    assert info["normalization"]["std"] > 0 and info["normalization"]["pairs"] == 205
    assert {"adapter_model.safetensors", "adapter_config.json", "score_head.safetensors",
            "tokenizer.json"} <= {p.name for p in out.iterdir()}

    scorer = RewardScorer(str(out))
    rows = synthetic_rows(8, seed=5)
    conversations = [r["messages"] for r in rows]
    good = scorer.score(conversations, [r["chosen"] for r in rows])
    bad = scorer.score(conversations, [r["rejected"] for r in rows])
    assert (good.raw > bad.raw).all()
    mean, std = info["normalization"]["mean"], info["normalization"]["std"]
    np.testing.assert_allclose(good.normalized, (good.raw - mean) / std)

    # Plain Hugging Face + peft gives the same reward at the last token.
    tok = models.load_tokenizer(tiny)
    base = models.load_sequence_classifier(tiny)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([scorer.encode(conversations[0], rows[0]["chosen"])])
    with torch.no_grad():
        hidden = peft_model.get_base_model().model(input_ids=ids).last_hidden_state[:, -1]
        reward = peft_model.get_base_model().score(hidden).item()
    assert reward == pytest.approx(good.raw[0], rel=1e-4, abs=1e-5)
    assert ids[0, -1].item() == tok.eos_token_id


def test_only_lora_and_score_head_train(tiny):
    tok = models.load_tokenizer(tiny)
    config = RewardConfig(preference_dataset="x", output_dir="x", reward_model_learning_rate_multiplier=10,
                          lora_dropout=0.0)
    model = build_reward_model(tiny, tok, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                               target_modules=["q_proj", "v_proj"], seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(10, 0, "constant"))
    pairs = [PreferencePair(r["messages"], r["chosen"], r["rejected"]) for r in synthetic_rows(16)]
    encoded, _ = batching.encode_pairs(tok, pairs, 64, 32)
    collate = Collator(model, tok.pad_token_id, True, torch.device("cpu"))
    for _ in range(3):
        metrics = train_step(model, collate, [encoded[:8], encoded[8:]], optimizer, scheduler, config)
    assert np.isfinite(metrics["loss/total"]) and metrics["optim/grad_norm"] > 0
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(("lora_" in n) or ("modules_to_save" in n) for n in names)
    assert any("score" in n for n in names)
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name in names), name


def test_bf16_training_and_scoring(tiny, data, tmp_path):
    """A bf16 base with fp32 LoRA and score head trains (the head gets its trained fp32 copy's
    dtype, not the frozen bf16 original's) and scores in bf16."""
    out = tmp_path / "r"
    result = train_reward_model(_config(tiny, data, out, dtype="bf16", reward_model_train_steps=3, eval_every=3,
                                        normalization_pairs=8))
    assert np.isfinite(result.metrics["loss/total"]) and np.isfinite(result.metrics["heldout/accuracy"])
    info = json.loads((out / "reward_model.json").read_text())
    assert info["normalization"]["std"] > 0
    rows = synthetic_rows(4, seed=3)
    scores = RewardScorer(str(out), dtype="bf16").score([r["messages"] for r in rows], [r["chosen"] for r in rows])
    assert np.isfinite(scores.raw).all()
    fp32 = RewardScorer(str(out)).score([r["messages"] for r in rows], [r["chosen"] for r in rows])
    np.testing.assert_allclose(scores.raw, fp32.raw, atol=0.1 * (np.abs(fp32.raw).max() + 1))


def test_bad_settings_fail_before_training(tiny, data, tmp_path):
    with pytest.raises(UserError, match="--reward-model-train-steps 0: must be a positive integer"):
        train_reward_model(_config(tiny, data, tmp_path / "a", reward_model_train_steps=0))
    with pytest.raises(UserError, match="--prompt-sequence-length -1: must be a positive integer"):
        train_reward_model(_config(tiny, data, tmp_path / "a", prompt_sequence_length=-1))
    with pytest.raises(UserError, match="'no-such-model'"):
        train_reward_model(_config(tiny, data, tmp_path / "a", large_model_reference="no-such-model"))
    with pytest.raises(UserError) as e:
        train_reward_model(_config(tiny, data, tmp_path / "a", lora_target_modules=["query_key_value"]))
    assert "'query_key_value'" in str(e.value) and "q_proj" in str(e.value) and "down_proj" in str(e.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "Hello"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: .*rejected"):
        train_reward_model(_config(tiny, data, tmp_path / "a", preference_dataset=str(bad)))
    assert not (tmp_path / "a" / "reward_model.json").exists()


def test_merged_model_and_resuming_with_other_settings_is_refused(tiny, data, tmp_path):
    out = tmp_path / "r"
    train_reward_model(_config(tiny, data, out, reward_model_train_steps=2, checkpoint_every=1,
                               eval_every=2, normalization_pairs=4, save_merged_model=True))
    # The merged model (plain Hugging Face, no peft) scores like base + adapter.
    rows = synthetic_rows(4, seed=9)
    args = ([r["messages"] for r in rows], [r["chosen"] for r in rows])
    merged = RewardScorer(str(out)).score(*args).raw
    adapter = RewardScorer(str(out), base_model=tiny).score(*args).raw
    assert (out / "merged" / "config.json").exists()
    np.testing.assert_allclose(merged, adapter, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match=r"other settings \(reward_lora_dim: 4 -> 8\)"):
        train_reward_model(_config(tiny, data, out, reward_model_train_steps=2, checkpoint_every=1,
                                   eval_every=2, normalization_pairs=4, reward_lora_dim=8))


def test_gradient_checkpointing_gives_the_same_step(tiny):
    tok = models.load_tokenizer(tiny)
    pairs = [PreferencePair(r["messages"], r["chosen"], r["rejected"]) for r in synthetic_rows(8)]
    encoded, _ = batching.encode_pairs(tok, pairs, 64, 32)
    config = RewardConfig(preference_dataset="x", output_dir="x", lora_dropout=0.0)
    results = []
    for checkpointing in (False, True):
        model = build_reward_model(tiny, tok, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                                   target_modules=["q_proj", "v_proj"], seed=0,
                                   gradient_checkpointing=checkpointing)
        base = model.get_base_model()
        flag = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") \
            else "is_gradient_checkpointing"
        assert getattr(base, flag) == checkpointing
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        collate = Collator(model, tok.pad_token_id, True, torch.device("cpu"))
        metrics = train_step(model, collate, [encoded], optimizer, scheduler, config)
        results.append((metrics, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
    assert results[1][0]["loss/total"] == pytest.approx(results[0][0]["loss/total"], rel=1e-6)
    assert results[1][0]["optim/grad_norm"] == pytest.approx(results[0][0]["optim/grad_norm"], rel=1e-4)
    for name, value in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], value, rtol=1e-4, atol=1e-6)


def test_scorer_reads_a_gcs_model_directory(trained, gcs_emulator, tmp_path, monkeypatch):
    import tempfile
    from rlhf import storage
    out, _ = trained
    uri = gcs_emulator.uri(f"reward-{tmp_path.name}")
    storage.upload_dir(str(out), uri)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # to see the download cleaned up
    rows = synthetic_rows(3, seed=8)
    args = ([r["messages"] for r in rows], [r["chosen"] for r in rows])
    remote = RewardScorer(uri).score(*args).raw
    np.testing.assert_allclose(remote, RewardScorer(str(out)).score(*args).raw)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("rlhf-reward-model-")]


def test_non_finite_loss_stops_before_saving_and_keeps_the_last_checkpoint(tiny, data, tmp_path):
    from rlhf.rundir import NonFiniteError
    calls = []

    def nan_score_from_the_third_step(module, inputs, output):
        # A real forward hook on the score head (Linear(hidden, 1)): one call per micro-batch.
        if isinstance(module, torch.nn.Linear) and module.out_features == 1:
            calls.append(1)
            if len(calls) >= 3:
                return output * float("nan")
        return None

    out = tmp_path / "r"
    handle = torch.nn.modules.module.register_module_forward_hook(nan_score_from_the_third_step)
    try:
        with pytest.raises(NonFiniteError, match=r"step 3: loss/total is not finite.*checkpoints/step-00000002"):
            train_reward_model(_config(tiny, data, out, reward_model_train_steps=4, checkpoint_every=2,
                                       eval_every=100, normalization_pairs=4))
    finally:
        handle.remove()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (out / "reward_model.json").exists() and not (out / "adapter_model.safetensors").exists()


def test_trains_into_cloud_storage_and_resumes_there(tiny, data, gcs_prefix):
    from rlhf import storage
    out = f"{gcs_prefix}/reward"
    config = _config(tiny, data, out, reward_model_train_steps=2, checkpoint_every=1, eval_every=2,
                     normalization_pairs=4)
    first = train_reward_model(config)
    assert first.resumed_from is None
    info = storage.read_json(f"{out}/reward_model.json")
    assert info["train_steps"] == 2 and info["format"] == "rlhf-reward-model/1"
    assert storage.exists(f"{out}/adapter_model.safetensors") and storage.exists(f"{out}/metrics.json")
    assert storage.exists(f"{out}/checkpoints/step-00000002/state.json")
    assert storage.expand(f"{out}/tensorboard/events.out.tfevents.*")
    rows = [json.loads(l) for l in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2]

    again = train_reward_model(config)  # a restart after the end resumes from the final checkpoint
    assert again.resumed_from == 2
    rows = [json.loads(l) for l in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert again.metrics["heldout/accuracy"] == first.metrics["heldout/accuracy"]
    assert again.normalization == first.normalization
