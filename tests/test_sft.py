"""SFT: the sft dataset kind (Vertex AI's supervised tuning rows, file:line errors), the preferred
candidates of preference data, the loss on response tokens only (against Hugging Face's own loss with
the prompt labels masked), the loss falling on a learnable toy set with only the adapter moving,
exact resume, the non-finite guard, the whole step (merged model = base + adapter) and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rlhf.data.canonical import PreferencePair
from rlhf.data.formats import parse_row
from rlhf.ppo.outputs import OutputLayout
from rlhf.sft.batching import EncodedExample, collate, response_nll
from rlhf.sft.config import SFTConfig
from rlhf.sft.data import preferred_examples
from rlhf.sft.trainer import SFTTrainer
from policy_trainer_checks import (check_a_killed_run_resumes_to_the_uninterrupted_result,
                                   check_a_non_finite_loss_stops_the_run_before_saving)
from test_ppo_train import EOS, tiny_model
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


# -- data ---------------------------------------------------------------------------------------

def test_sft_rows_in_vertex_text_and_chat_formats_and_their_errors():
    text = parse_row("sft", {"input_text": "Q", "output_text": "A", "instruction": "Be brief."}, source="f:1")
    assert text.format == "sft_text" and not text.errors
    assert (text.rows[0].messages, text.rows[0].response, text.rows[0].instruction) == (
        [{"role": "user", "content": "Q"}], "A", "Be brief.")
    def conversation(answer):
        return {"messages": [{"author": "user", "content": "hi"}, {"author": "assistant", "content": "yo"},
                             {"author": "user", "content": "and?"}, {"author": "assistant", "content": answer}]}
    chat = parse_row("sft", conversation("done"))
    assert chat.format == "sft_chat" and chat.rows[0].response == "done"
    assert [m["role"] for m in chat.rows[0].messages] == ["user", "assistant", "user"]
    assert chat.key != parse_row("sft", conversation("other")).key  # same prompt, other answer: no duplicate
    for row, error in (({"input_text": "Q"}, "missing field `output_text`"),
                       ({"messages": [{"author": "user", "content": "Q"}]}, "end with the assistant's answer"),
                       ({"messages": [{"author": "user", "content": "Q"}, {"author": "assistant", "content": ""}]},
                        "`messages[1].content` is empty"),
                       ({"messages": [{"author": "user", "content": "Q"}, {"author": "assistant", "content": "A"}],
                         "output_text": "B"}, "both `output_text` and an assistant turn")):
        parsed = parse_row("sft", row)
        assert not parsed.rows and any(error in e for e in parsed.errors), parsed.errors
    # The labeled kind, which shares output_text, is unchanged.
    labeled = parse_row("labeled", {"input_text": "Q", "output_text": "A", "label": 1})
    assert labeled.format == "labeled" and labeled.rows[0].label == 1


def test_validation_writes_sft_rows_and_reports_bad_ones_by_line(tmp_path):
    from rlhf.data.validate import ValidateConfig, run_validation
    good = write_jsonl(tmp_path / "sft.jsonl", [{"input_text": f"q{i}", "output_text": f"a{i}"} for i in range(3)])
    report = run_validation(ValidateConfig(sft_dataset=str(good), output_dir=str(tmp_path / "out")))
    assert report.ok and report.stats["datasets"]["sft"]["examples"] == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows] == ["a0", "a1", "a2"] and rows[0]["source"].endswith("sft.jsonl:1")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "q", "output_text": "a"}, {"input_text": "q"}])
    report = run_validation(ValidateConfig(sft_dataset=str(bad), output_dir=str(tmp_path / "out2")))
    assert not report.ok and f"{bad}:2: missing field `output_text`" in report.problem_text()
    assert not (tmp_path / "out2" / "sft.jsonl").exists()


def test_preferred_candidates_keep_each_prompts_best_answers_once():
    q1, q2 = [{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]
    pairs = [PreferencePair(q1, "best", "mid", "f:1"), PreferencePair(q1, "best", "worst", "f:1"),
             PreferencePair(q1, "mid", "worst", "f:1"),   # ranked best > mid > worst: only "best"
             PreferencePair(q2, "x", "y", "f:2"), PreferencePair(q2, "y", "x", "f:3"),  # a cycle: both kept
             PreferencePair(q1, "best", "mid", "f:4", instruction="Be brief.")]  # another prompt
    got = [(e.messages[0]["content"], e.response, e.instruction) for e in preferred_examples(pairs)]
    assert got == [("q1", "best", None), ("q2", "x", None), ("q2", "y", None), ("q1", "best", "Be brief.")]


# -- the loss -----------------------------------------------------------------------------------

def test_the_loss_reads_response_tokens_only():
    model = tiny_model()
    examples = [EncodedExample([5, 6, 7, 8], [9, 3, EOS]), EncodedExample([4], [3, 3, 3, 3, EOS])]
    nll, tokens = response_nll(model, collate(examples, EOS))
    assert tokens.tolist() == [3, 5]
    with torch.no_grad():
        for k, ex in enumerate(examples):  # Hugging Face's loss on one unpadded row, prompt labels masked
            ids = torch.tensor([ex.prompt + ex.response])
            masked = ids.clone()
            masked[0, :len(ex.prompt)] = -100
            hf = model.causal_lm(input_ids=ids, labels=masked).loss.item() * len(ex.response)
            assert nll[k].item() == pytest.approx(hf, rel=1e-4)
            if len(ex.prompt) > 1:  # (a first token is never a label: a 1-token prompt has none)
                # Giving the prompt tokens labels (what an unmasked loss does) would change the loss.
                unmasked = model.causal_lm(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
                assert abs(unmasked - hf) > 0.1
    # Another prompt token label cannot matter: rows differing only in a prompt token score their
    # responses differently only through the context (the first row's shorter prompt is padded).
    same_context = [EncodedExample([5, 6, 7, 8], [9, 3, EOS])] * 2
    a, _ = response_nll(model, collate(same_context, EOS))
    assert a[0].item() == pytest.approx(nll[0].item(), abs=1e-5) == pytest.approx(a[1].item(), abs=1e-5)


# -- the loop on a toy task -----------------------------------------------------------------------

def toy_examples(n=40, seed=1):
    """Learnable: after any prompt, the answer is '3 4 EOS'."""
    g = torch.Generator().manual_seed(seed)
    return [EncodedExample(torch.randint(5, 16, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist(),
                           [3, 4, EOS]) for _ in range(n)]


def toy_config(**kw):
    base = dict(sft_dataset="unused", output_dir="unused", sft_train_steps=12, batch_size=8,
                sft_learning_rate_multiplier=50, warmup_ratio=0.0, lr_scheduler="constant", checkpoint_every=0,
                log_every=100, lora_dropout=0.0)
    base.update(kw)
    return SFTConfig(**base)


def test_the_loss_falls_and_only_the_adapter_moves(tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(toy_config(), model, toy_examples(), EOS, OutputLayout(str(tmp_path)),
                         heldout=toy_examples(8, seed=2))
    summary = trainer.train()
    losses = [row["loss/total"] for row in trainer.tracker.history]
    assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0], losses  # seen: ~2.8 -> ~0.5
    assert summary["heldout/loss"] < 0.5 * losses[0] and summary["heldout/examples"] == 8
    assert summary["heldout/perplexity"] == pytest.approx(math.exp(summary["heldout/loss"]))
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (".lora_" in name), name  # the adapter moves; base and the unused value head stay


def test_bf16_base_learns_with_fp32_adapters(tmp_path):
    """The same code as on a GPU in bf16: a bf16 base with fp32 LoRA learns the toy answer, and only
    the fp32 adapters move."""
    model = tiny_model(dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(toy_config(), model, toy_examples(), EOS, OutputLayout(str(tmp_path)),
                         heldout=toy_examples(8, seed=2))
    summary = trainer.train()
    losses = [row["loss/total"] for row in trainer.tracker.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.5 * losses[0], losses
    assert summary["heldout/loss"] < 0.5 * losses[0]
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved and all(".lora_" in n for n in moved)


def new_trainer(config, out_dir):
    return SFTTrainer(config, tiny_model(), toy_examples(), EOS, OutputLayout(out_dir))


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    check_a_killed_run_resumes_to_the_uninterrupted_result(
        tmp_path, new_trainer, toy_config, "sft_train_steps", refused={"lora_rank": 4},
        refusal=(Exception, "lora_rank"), lora_dropout=0.1, gradient_accumulation_steps=2)


def test_a_non_finite_loss_stops_the_run_before_saving(tmp_path):
    # o_proj: its output joins the residual stream (a NaN query may vanish in a fused attention kernel)
    check_a_non_finite_loss_stops_the_run_before_saving(tmp_path, new_trainer, toy_config, "sft_train_steps",
                                                        "o_proj.lora_B.")


# -- the whole step and the CLI -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def sft_rows(n, seed=0):
    """Vertex AI's supervised tuning text rows made from the synthetic preference rows' chosen answers."""
    return [{"input_text": r["messages"][0]["content"], "output_text": r["chosen"]} for r in synthetic_rows(n, seed)]


def test_the_step_writes_a_merged_model_equal_to_base_plus_adapter(tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf import models
    from rlhf.sft.run import train_sft
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(24, seed=1))
    out = tmp_path / "sft"
    cfg = SFTConfig(sft_dataset=str(data), output_dir=str(out), large_model_reference=tiny_dir, sft_train_steps=3,
                    batch_size=4, checkpoint_every=2, target_sequence_length=16, prompt_sequence_length=32,
                    log_every=1, sft_learning_rate_multiplier=20, heldout_fraction=0.2)
    summary = train_sft(cfg)
    assert summary["heldout/examples"] == 5 and "loss/total" in summary
    saved = json.loads((out / "summary.json").read_text())
    assert saved["base_model"] == tiny_dir and saved["steps"] == 3 and saved["stage"] == "sft"
    assert saved["merged_model"] == str(out / "merged_model")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3 and any((out / "tensorboard").iterdir())
    ids = torch.tensor([[1, 520, 33, 1012, 7, 2]])
    with torch.no_grad():
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(out / "policy_adapter"))
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged_model"))
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)
        assert (merged(ids).logits - base(ids).logits).abs().max() > 1e-3  # and it is not the base
    # The merged directory is a base model for the later steps: tokenizer and chat template kept.
    template = models.load_tokenizer(tiny_dir).chat_template
    assert template and models.load_tokenizer(str(out / "merged_model")).chat_template == template
    assert train_sft(cfg)["heldout/examples"] == 5  # rerun on the finished directory: resumes at the end


def test_the_step_on_the_preferred_candidates_of_preference_data(tiny_dir, tmp_path):
    from rlhf.sft.run import train_sft
    data = write_jsonl(tmp_path / "pref.jsonl", synthetic_rows(12, seed=2))
    cfg = SFTConfig(preference_dataset=str(data), output_dir=str(tmp_path / "o"), large_model_reference=tiny_dir,
                    sft_train_steps=1, batch_size=4, target_sequence_length=16, prompt_sequence_length=32,
                    save_merged_model=False, heldout_fraction=0.0)
    summary = train_sft(cfg)
    assert summary["loss/total"] > 0 and not (tmp_path / "o" / "merged_model").exists()
    assert (tmp_path / "o" / "policy_adapter" / "adapter_model.safetensors").exists()


def _rlhf(*args):
    return subprocess.run([sys.executable, "-m", "rlhf", "sft", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_naming_the_flag_or_the_row(tmp_path):
    done = _rlhf("--output-dir", str(tmp_path))
    assert done.returncode == 2 and "--sft-dataset" in done.stderr and "Traceback" not in done.stderr
    done = _rlhf("--sft-dataset", "x.jsonl", "--output-dir", str(tmp_path), "--lr-scheduler", "step")
    assert done.returncode == 2 and "--lr-scheduler" in done.stderr and "cosine" in done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_text": "q", "output_text": "a"}\n'
                   '{"messages": [{"author": "user", "content": "hi"}]}\n')
    done = _rlhf("--sft-dataset", str(bad), "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 2 and f"{bad}:2" in done.stderr and "assistant's answer" in done.stderr
    assert "Traceback" not in done.stderr
