"""The PPO loop on tiny models: reward rises with bounded KL, only adapters move, the KL-free run
skips the reference, NaN stops the run, outputs, and exact resume after a kill."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

from rlhf.ppo.config import PPOConfig
from rlhf.ppo.outputs import OutputLayout
from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.trainer import NonFiniteError, PPOTrainer

EOS = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


class IdTokenizer:
    """What the trainer needs of a tokenizer for prompts given as ids: EOS/pad ids and decode."""
    eos_token_id = EOS
    pad_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == EOS))


def tiny_model(vocab=16, seed=0, init=0.1, value_model="head", dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, initializer_range=init)  # no pad_token_id: it would zero EOS's embedding
    lm = AutoModelForCausalLM.from_config(cfg).to(dtype)
    return SharedBaseModel(lm, lora_rank=8, lora_alpha=16, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                           value_model=value_model)


def toy_prompts(n=64, vocab=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def shorter_is_better(rollout):
    """Toy reward: 0 for an immediate EOS, -1 for a response that uses all 8 tokens."""
    return -rollout.response_mask.sum(1) / 8


def toy_config(**kw):
    base = dict(reinforcement_learning_train_steps=16, batch_size=16, mini_batch_size=8, target_sequence_length=8,
                kl_coeff=0.1, reinforcement_learning_rate_multiplier=30, missing_eos_penalty=0,
                checkpoint_every=0, temperature=1.0, ppo_epochs=4, sample_count=0, log_every=100)
    base.update(kw)
    return PPOConfig(**base)


def test_reward_rises_kl_stays_bounded_and_only_adapters_move(tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PPOTrainer(toy_config(), model, IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    trainer.train()
    hist = trainer.tracker.history
    rewards = [row["reward/mean"] for row in hist]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.3, rewards  # seen: about -0.8 -> -0.2 (seeds 0-2)
    kls = [row["policy/kl"] for row in hist]
    assert max(kls) < 6.0, kls  # nats per response (seen <= 3): the penalty keeps the policy near the reference
    for name in ("loss/policy", "loss/value", "policy/entropy", "policy/clipfrac", "policy/approx_kl",
                 "objective/kl_coeff", "response/length", "perf/tokens_per_s", "time/generation_s",
                 "time/scoring_s", "time/training_s", "reward/std", "optim/grad_norm"):
        assert name in hist[-1], name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and ".policy." in n or n.startswith("value_head.") for n in trainable)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trainable), name
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 17))


@pytest.mark.parametrize("value_model", ["head", "adapter"])
def test_bf16_base_trains_a_few_steps_with_fp32_adapters(tmp_path, value_model):
    """The same code as on a GPU in bf16: a bf16 base with fp32 LoRA and value head runs the whole
    step (rollout, old policy, reference, update) and only the adapters move."""
    model = tiny_model(value_model=value_model, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = toy_config(reinforcement_learning_train_steps=3, ppo_epochs=2, ent_coef=0.01, gradient_accumulation_steps=2)
    trainer = PPOTrainer(cfg, model, IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    trainer.train()
    assert all(math.isfinite(v) for row in trainer.tracker.history for v in row.values() if isinstance(v, float))
    assert model.lm_head.weight.dtype == torch.bfloat16
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())


def test_value_adapter_variant_with_entropy_bonus_trains_both_adapters(tmp_path):
    model = tiny_model(value_model="adapter")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = toy_config(reinforcement_learning_train_steps=2, ppo_epochs=2, ent_coef=0.01, gradient_accumulation_steps=2)
    trainer = PPOTrainer(cfg, model, IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    trainer.train()
    assert trainer.tracker.history[-1]["loss/entropy"] < 0  # the entropy bonus is in the objective
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any(".value." in n for n in moved) and any(".policy." in n for n in moved)
    assert all(".lora_" in n or n.startswith("value_head.") for n in moved)


def _count_reference_passes(model):
    calls = []
    lora_layer = next(m for m in model.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A"))
    model.trunk.register_forward_pre_hook(lambda *_: calls.append(bool(lora_layer.disable_adapters)))
    return calls


@pytest.mark.parametrize("kl_coeff", [0.0, 0.1])
def test_zero_kl_coeff_skips_the_reference_pass(tmp_path, kl_coeff):
    model = tiny_model()
    calls = _count_reference_passes(model)
    cfg = toy_config(reinforcement_learning_train_steps=2, kl_coeff=kl_coeff, ppo_epochs=1)
    trainer = PPOTrainer(cfg, model, IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    trainer.train()
    assert sum(calls) == (0 if kl_coeff == 0 else 2)
    assert ("policy/kl" in trainer.tracker.history[-1]) == (kl_coeff > 0)


def test_nan_reward_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    model = tiny_model()
    calls = []

    def reward(rollout):
        calls.append(1)
        score = shorter_is_better(rollout)
        return score * float("nan") if len(calls) >= 4 else score  # 2 steps + 1 sample call, then NaN

    cfg = toy_config(reinforcement_learning_train_steps=5, checkpoint_every=2, sample_count=2, ppo_epochs=1)
    trainer = PPOTrainer(cfg, model, IdTokenizer(), toy_prompts(), reward, OutputLayout(str(tmp_path)))
    with pytest.raises(NonFiniteError, match=r"step 3: reward is not finite.*checkpoints/step-00000002"):
        trainer.train()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000002"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not (tmp_path / "policy_adapter").exists()


# -- end to end through `rlhf tune`, with a tiny model directory and a trained-format reward model --


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    return build_tiny_setup(tmp_path_factory.mktemp("ppo-e2e"))


def build_tiny_setup(root):
    """A tiny base model directory (SmolLM2 tokenizer), a reward model saved by the reward step's own
    writer on that base, and a prompt dataset in the canonical format."""
    from peft import LoraConfig, get_peft_model
    from rlhf.data.canonical import Prompt, write_jsonl
    from rlhf.models import load_tokenizer
    from rlhf.reward import outputs
    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rm = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    rm = get_peft_model(rm, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                       modules_to_save=["score"]))
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_(0, 0.3)
    outputs.save(rm, tok, str(root / "reward"), {
        "base_model": str(root / "base"), "base_model_resolved": str(root / "base"), "use_chat_template": False,
        "prompt_sequence_length": 32, "target_sequence_length": 8, "instruction": "",
        "normalization": {"mean": 0.1, "std": 1.5, "pairs": 8}})
    words = ["cats", "rain", "tea", "maps", "jazz", "snow", "bread", "trains"]
    write_jsonl(str(root / "prompts.jsonl"),
                [Prompt(messages=[{"role": "user", "content": f"Tell me about {w}."}]) for w in words])
    return root


def tune_args(setup, out, steps, extra=()):
    return ["tune", "--prompt-dataset", str(setup / "prompts.jsonl"), "--reward-model", str(setup / "reward"),
            "--output-dir", str(out), "--reinforcement-learning-train-steps", str(steps), "--batch-size", "4",
            "--mini-batch-size", "2", "--ppo-epochs", "2", "--target-sequence-length", "6",
            "--checkpoint-every", "2", "--sample-count", "2", "--device", "cpu",
            "--reinforcement-learning-rate-multiplier", "30", *extra]


def test_tune_cli_writes_a_loadable_adapter_metrics_and_samples(tiny_setup, tmp_path):
    from peft import PeftModel
    from rlhf import cli
    out = tmp_path / "run"
    assert cli.main(tune_args(tiny_setup, out, 3, ["--save-merged-model"])) == 0
    adapter = out / "policy_adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors",
            "ppo_config.json"} <= set(os.listdir(adapter))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("reward/mean", "policy/kl", "objective/kl_coeff", "loss/policy"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward/mean"] == rows[-1]["reward/mean"]
    assert sorted(os.listdir(out / "samples")) == ["step-00000002.jsonl", "step-00000003.jsonl"]
    sample = json.loads((out / "samples" / "step-00000003.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith("Tell me about") and isinstance(sample["response"], str)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tensorboard"))
    # the adapter loads with plain peft and gives the policy's log-probs
    base = AutoModelForCausalLM.from_pretrained(tiny_setup / "base")
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    # the merged model (Hugging Face format, for serving) computes what base + adapter computes
    merged = AutoModelForCausalLM.from_pretrained(out / "merged_model")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(tiny_setup / "base")
        assert not torch.allclose(merged(ids).logits, plain(ids).logits, atol=1e-4)


def test_tune_cli_runs_in_bf16(tiny_setup, tmp_path):
    """`rlhf tune --dtype bf16` end to end (bf16 base, the reward adapter on it, fp32 adapters)."""
    from rlhf import cli
    out = tmp_path / "run"
    assert cli.main(tune_args(tiny_setup, out, 2, ["--dtype", "bf16"])) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert (out / "policy_adapter" / "adapter_model.safetensors").exists()


def test_tune_rejects_bad_input_before_loading_models(tiny_setup, tmp_path, capsys):
    from rlhf import cli
    assert cli.main(tune_args(tiny_setup, tmp_path / "r", 2, ["--kl-estimator", "k2"])) == 2
    assert "--kl-estimator 'k2'" in capsys.readouterr().err
    args = tune_args(tiny_setup, tmp_path / "r", 2)
    args[args.index("--reward-model") + 1] = str(tmp_path / "nowhere")
    assert cli.main(args) == 2
    assert "not a trained reward model" in capsys.readouterr().err


def _final_state(out):
    from safetensors.torch import load_file
    weights = load_file(str(out / "policy_adapter" / "adapter_model.safetensors"))
    weights.update({"value_head." + k: v for k, v in
                    load_file(str(out / "policy_adapter" / "value_head.safetensors")).items()})
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]
    return weights, rows


def test_killed_run_resumes_to_the_same_weights_and_metrics(tiny_setup, tmp_path):
    from rlhf import cli
    steps = 6
    straight = tmp_path / "straight"
    assert cli.main(tune_args(tiny_setup, straight, steps)) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same arithmetic as this process (one thread)
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", *tune_args(tiny_setup, killed, steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    marker = killed / "checkpoints" / "step-00000002" / "state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), proc.stderr.read().decode()[-2000:]
    assert not (killed / "policy_adapter").exists()  # killed mid-run, before the end
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert done < steps

    assert cli.main(tune_args(tiny_setup, killed, steps)) == 0  # resumes
    w1, m1 = _final_state(straight)
    w2, m2 = _final_state(killed)
    assert m1 == m2
    assert set(w1) == set(w2) and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_resume_with_other_settings_is_refused(tmp_path):
    from rlhf.errors import UserError
    cfg = toy_config(reinforcement_learning_train_steps=1, checkpoint_every=1, ppo_epochs=1)
    PPOTrainer(cfg, tiny_model(), IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path))).train()
    other = toy_config(reinforcement_learning_train_steps=2, checkpoint_every=1, ppo_epochs=1, kl_coeff=0.3)
    trainer = PPOTrainer(other, tiny_model(), IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    with pytest.raises(UserError, match="kl_coeff"):
        trainer.resume()
    # more steps with the same settings is a plain resume
    more = toy_config(reinforcement_learning_train_steps=2, checkpoint_every=1, ppo_epochs=1)
    assert PPOTrainer(more, tiny_model(), IdTokenizer(), toy_prompts(), shorter_is_better,
                      OutputLayout(str(tmp_path))).resume() == 1


def test_config_from_dict_coerces_kfp_numbers_and_rejects_unknown_names():
    from rlhf.errors import UserError
    cfg = PPOConfig.from_dict({"batch_size": 32.0, "kl_coeff": 1, "lora_target_modules": ("q_proj",),
                               "instruction": None})
    assert cfg.batch_size == 32 and isinstance(cfg.batch_size, int) and cfg.kl_coeff == 1.0
    assert cfg.lora_target_modules == ["q_proj"]
    with pytest.raises(UserError, match="unknown PPO setting"):
        PPOConfig.from_dict({"batch_sise": 8})
    with pytest.raises(UserError, match="expected int"):
        PPOConfig.from_dict({"batch_size": "8"})
    with pytest.raises(UserError, match="--top-p"):
        PPOConfig(top_p=0).validate()


def test_reward_model_on_another_base_is_loaded_apart_and_scores_like_the_shared_adapter(tiny_setup, tmp_path):
    """A reward model whose base is another directory runs apart (RewardScorer, text in) and gives
    the scores the shared-adapter path gives from token ids, on a copy of the same weights, for
    finished responses (with EOS) and cut-off ones (without: both paths score them as they stand)."""
    import shutil
    from rlhf import models
    from rlhf.encoding import encode_response
    from rlhf.ppo.prompts import left_pad, load_prompts
    from rlhf.ppo.reward import SeparateReward, SharedBaseReward, build_reward
    from rlhf.ppo.rollout import Rollout
    from rlhf.reward import outputs
    shutil.copytree(tiny_setup / "base", tmp_path / "other-base")
    shutil.copytree(tiny_setup / "reward", tmp_path / "reward")
    info = json.loads((tmp_path / "reward" / "reward_model.json").read_text())
    info.update(base_model=str(tmp_path / "other-base"), base_model_resolved=str(tmp_path / "other-base"))
    (tmp_path / "reward" / "reward_model.json").write_text(json.dumps(info))

    base = str(tiny_setup / "base")
    tok = models.load_tokenizer(base, padding_side="left")
    prompts = load_prompts(str(tiny_setup / "prompts.jsonl"), tok, 32, use_chat_template=False)
    texts = ("Cats sleep a lot.", "It rains.", "Tea is hot")
    ended = [True] * 3 + [False] * 3  # the same texts cut off at the length limit: no EOS
    responses = [encode_response(tok, t, add_eos=e) for t, e in zip(texts + texts, ended)]
    assert all(r[-1] == tok.eos_token_id for r in responses[:3]) and all(r[-1] != tok.eos_token_id for r in responses[3:])
    ids, mask = left_pad(prompts.ids[:3] * 2, tok.pad_token_id)
    width = max(len(r) for r in responses)
    resp = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in responses])
    rmask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in responses])
    rollout = Rollout(ids, mask, resp, rmask, torch.zeros_like(rmask), torch.zeros_like(rmask), None,
                      torch.tensor(ended), prompt_index=[0, 1, 2] * 2)

    model = SharedBaseModel(models.load_causal_lm(base, device="cpu"), lora_target_modules=["q_proj"])
    apart = build_reward(str(tmp_path / "reward"), outputs.read_info(str(tmp_path / "reward")), model, base,
                         base, tok, prompts.messages, device="cpu")
    assert isinstance(apart, SeparateReward) and "reward" not in model.peft.peft_config
    shared = build_reward(str(tiny_setup / "reward"), outputs.read_info(str(tiny_setup / "reward")), model, base,
                          base, tok, prompts.messages, device="cpu")
    assert isinstance(shared, SharedBaseReward)
    scores = shared(rollout)
    torch.testing.assert_close(apart(rollout), scores, atol=1e-4, rtol=1e-4)
    assert (scores[:3] - scores[3:]).abs().min() > 1e-3  # EOS or not does change the score


def test_tune_reads_and_writes_cloud_storage_and_resumes_there(tiny_setup, gcs_prefix):
    from rlhf import cli, storage
    storage.upload_dir(str(tiny_setup / "reward"), f"{gcs_prefix}/reward")
    storage.write_text(f"{gcs_prefix}/prompts.jsonl", (tiny_setup / "prompts.jsonl").read_text())
    out = f"{gcs_prefix}/run"

    def args(steps):
        a = tune_args(tiny_setup, out, steps, ["--checkpoint-every", "1"])
        a[a.index("--prompt-dataset") + 1] = f"{gcs_prefix}/prompts.jsonl"
        a[a.index("--reward-model") + 1] = f"{gcs_prefix}/reward"
        return a

    assert cli.main(args(1)) == 0
    assert storage.exists(f"{out}/policy_adapter/adapter_model.safetensors")
    assert storage.exists(f"{out}/checkpoints/step-00000001/state.json")
    assert cli.main(args(2)) == 0  # resumes from the gs:// checkpoint
    rows = [json.loads(x) for x in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads(storage.read_text(f"{out}/summary.json"))["steps"] == 2


def test_prompts_load_from_a_raw_user_file_and_bad_rows_name_their_line(tiny_setup, tmp_path):
    """`rlhf tune` takes the user's own prompt JSONL (Google's formats), not only validated rows."""
    from rlhf import models
    from rlhf.errors import UserError
    from rlhf.ppo.prompts import load_prompts
    tok = models.load_tokenizer(str(tiny_setup / "base"), padding_side="left")
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"input_text": "Cats sleep a lot."}) + "\n\n"
                   + json.dumps({"messages": [{"author": "user", "content": "Tea is hot."}]}) + "\n")
    prompts = load_prompts(str(raw), tok, 32, instruction="Summarize:", use_chat_template=False)
    assert len(prompts.ids) == 2 and all(ids for ids in prompts.ids)
    assert "Summarize:" in prompts.texts[0] and "Cats sleep a lot." in prompts.texts[0]
    assert "Tea is hot." in prompts.texts[1]

    raw.write_text(json.dumps({"input_text": "fine"}) + "\n" + json.dumps({"input_txt": "typo"}) + "\n")
    with pytest.raises(UserError, match=r"raw.jsonl:2: .*input_text"):
        load_prompts(str(raw), tok, 32)
