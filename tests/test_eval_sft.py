"""Evaluation of a policy tuned from an SFT model: `rlhf sft` records the original base in its merged
model (rlhf_sft.json), and `rlhf evaluate` then answers the same prompts with the original base, the SFT
model and the tuned policy. Each column is checked against a plain two-model evaluation of the same
models, each win rate against the per-prompt scores, and the report's three columns as parsed HTML."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.evaluate import metrics as M
from rlhf.evaluate.config import EvalConfig
from rlhf.evaluate.run import evaluate
from rlhf.sft.provenance import RECORD_FILE
from test_eval_inference import POSTS, built_once, tiny  # noqa: F401  (fixture)
from test_eval_run import eval_rows, tiny_reward_model, write_jsonl  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def build_sft_lineage(root: Path, base_dir: str) -> None:
    """`rlhf sft` on the tiny base (`root/sft/merged_model`), then a random LoRA adapter on the merged
    model (`root/adapter`), standing in for the policy PPO tunes from it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf.sft.config import SFTConfig
    from rlhf.sft.run import train_sft

    data = write_jsonl(root / "sft.jsonl", [{"input_text": POSTS[i % len(POSTS)], "output_text": "A short summary."}
                                            for i in range(8)])
    train_sft(SFTConfig(sft_dataset=str(data), output_dir=str(root / "sft"), large_model_reference=base_dir,
                        sft_train_steps=2, batch_size=4, checkpoint_every=0, heldout_fraction=0.0,
                        sft_learning_rate_multiplier=50, target_sequence_length=16, prompt_sequence_length=64,
                        device="cpu"))
    merged = root / "sft" / "merged_model"
    torch.manual_seed(1)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(merged),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tuned.save_pretrained(root / "adapter")
    cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(merged)  # as PPO records its base: the SFT model
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def lineage(tiny, tmp_path_factory):  # noqa: F811
    base_dir, _ = tiny
    root = built_once(tmp_path_factory, "eval-sft", lambda r: build_sft_lineage(r, base_dir))
    return base_dir, str(root / "sft" / "merged_model"), str(root / "adapter")


def config(out: Path, data: Path, model: str, **kw) -> EvalConfig:
    return EvalConfig(eval_dataset=str(data), model=model, output_dir=str(out), target_sequence_length=8,
                      batch_size=3, device="cpu", **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Cells(HTMLParser):
    """Header cells of each table and the titles of each side-by-side sample."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.headers: list[list[str]] = []
        self.sides: list[list[str]] = []
        self.winners: list[str] = []  # per sample: the outlined model's title, or ""
        self.stack: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag == "table":
            self.headers.append([])
        if cls == "side":
            self.sides.append([])
            self.winners.append("")
        self.stack.append((tag, cls))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        tags = [t for t, _ in self.stack]
        if tags and tags[-1] == "th":
            self.headers[-1].append(data)
        elif tags and tags[-1] == "b" and any(c == "side" for _, c in self.stack):
            self.sides[-1].append(data)
            if self.stack[-2][1] == "win":
                self.winners[-1] = data


def test_sft_writes_the_record_inside_its_merged_model(lineage):
    base_dir, merged, _ = lineage
    record = json.loads((Path(merged) / RECORD_FILE).read_text())
    assert record["stage"] == "sft" and record["base_model"] == base_dir and record["steps"] == 2
    assert record["demonstrations"].endswith("sft.jsonl")
    summary = json.loads((Path(merged).parent / "summary.json").read_text())  # the run's own info agrees
    assert summary["base_model"] == base_dir and summary["merged_model"] == merged


def test_evaluation_of_a_policy_tuned_from_sft_compares_base_sft_and_tuned(lineage, tiny_reward_model, tmp_path):
    base_dir, merged, adapter = lineage
    data = write_jsonl(tmp_path / "eval.jsonl", eval_rows())
    result = evaluate(config(tmp_path / "three", data, adapter, reward_model=tiny_reward_model,
                             num_report_samples=2))
    m, out = result.metrics, tmp_path / "three"

    # Each column is what a plain two-model evaluation of the same models generates: tuned and SFT
    # (--no-sft-comparison: tuned against its own base), the original base and SFT (the merged model
    # as the "tuned" full model on the original base).
    pair = evaluate(config(tmp_path / "pair", data, adapter, sft_comparison=False))
    sft_on_base = evaluate(config(tmp_path / "sft_on_base", data, merged, large_model_reference=base_dir,
                                  measure_kl=False))
    predictions = {p.name: p.read_text() for p in (out / "predictions").glob("*.jsonl")}
    assert sorted(predictions) == ["base.jsonl", "scores.jsonl", "sft.jsonl", "tuned.jsonl"]
    assert predictions["tuned.jsonl"] == (tmp_path / "pair" / "predictions" / "tuned.jsonl").read_text()
    assert predictions["sft.jsonl"] == (tmp_path / "pair" / "predictions" / "base.jsonl").read_text()
    assert predictions["sft.jsonl"] == (tmp_path / "sft_on_base" / "predictions" / "tuned.jsonl").read_text()
    assert predictions["base.jsonl"] == (tmp_path / "sft_on_base" / "predictions" / "base.jsonl").read_text()
    assert predictions["sft.jsonl"] != predictions["base.jsonl"]  # SFT changed the model: a real third column
    # KL is against the tuned policy's reference, the SFT model, as before; no SFT keys without SFT.
    assert m["eval/kl"] == pytest.approx(pair.metrics["eval/kl"], abs=1e-6)
    assert not [k for k in pair.metrics if "sft" in k] and not [k for k in sft_on_base.metrics if "sft" in k]

    # Every metric of base and tuned exists for the SFT model, and each win rate is what the
    # per-prompt scores say (ties half).
    scores = lines(out / "predictions" / "scores.jsonl")
    assert all(set(s) >= {"base", "sft", "tuned"} for s in scores) and len(scores) == 4
    per = {(kind, g): [s[g][kind] for s in scores] for kind in ("judge", "reward") for g in ("base", "sft", "tuned")}
    for kind in ("judge", "reward"):
        for g in ("base", "sft", "tuned"):
            assert m[f"eval/{kind}_{g}_mean"] == pytest.approx(M.mean(per[kind, g]))
        expected = {f"eval/{kind}_win_rate": M.win_rate(per[kind, "tuned"], per[kind, "base"]),
                    f"eval/{kind}_win_rate_vs_sft": M.win_rate(per[kind, "tuned"], per[kind, "sft"]),
                    f"eval/{kind}_sft_win_rate_vs_base": M.win_rate(per[kind, "sft"], per[kind, "base"]),
                    f"eval/{kind}_delta_vs_sft": M.mean(per[kind, "tuned"]) - M.mean(per[kind, "sft"]),
                    f"eval/{kind}_sft_delta_vs_base": M.mean(per[kind, "sft"]) - M.mean(per[kind, "base"])}
        for key, value in expected.items():
            assert m[key] == pytest.approx(value), key
    # The reward model tells these random models apart: its tuned-over-SFT rate is not the base one.
    for name in ("rouge_l_sft", "length_words_sft_mean", "length_tokens_sft_mean", "eos_sft_fraction",
                 "reward_sft_std", "reward_sft_normalized_mean", "reward_hacking_alarm_vs_sft"):
        assert f"eval/{name}" in m, name
    assert m["eval/rouge_l_sft"] == pytest.approx(M.mean([s["sft"]["rouge_l"] for s in scores[:3]]))

    # The report: three columns in the metric and judge-rule tables and in each sample.
    html = (out / "report.html").read_text()
    cells = Cells()
    cells.feed(html)
    assert cells.headers[1] == ["Metric", "Base", "SFT", "Tuned", "Change", "Change vs SFT", "Note"]
    assert ["Rule", "Base", "SFT", "Tuned", "Change", "Change vs SFT"] in cells.headers
    assert cells.sides == [["Base", "SFT", "Tuned"]] * 2
    assert f"{m['eval/judge_win_rate_vs_sft']:.1%}" in html and "KL(tuned || SFT)" in html
    assert f"<b>SFT model</b></td><td>{merged} (the tuned policy" in html and f"<td>{base_dir}</td>" in html
    md = (out / "summary.md").read_text()
    assert md.startswith("## Evaluation: tuned vs SFT vs base on 4 eval prompts")
    assert (f"- Judge win rate over the SFT model (tuned over SFT, ties count half): "
            f"**{m['eval/judge_win_rate_vs_sft']:.1%}**\n") in md
    assert f"- SFT model (the tuned policy's starting point): judge {m['eval/judge_sft_mean']:.3f}" in md


def test_a_recorded_base_that_does_not_resolve_falls_back_to_two_models_with_a_note(lineage, tmp_path):
    _, merged, adapter = lineage
    moved = tmp_path / "sft_elsewhere"
    shutil.copytree(merged, moved)
    (moved / RECORD_FILE).write_text(json.dumps({"stage": "sft", "base_model": "/on/another/machine"}))
    data = write_jsonl(tmp_path / "eval.jsonl", eval_rows()[:2])
    result = evaluate(config(tmp_path / "o", data, adapter, large_model_reference=str(moved), judge=False))
    assert not [k for k in result.metrics if "sft" in k]
    assert not (tmp_path / "o" / "predictions" / "sft.jsonl").exists()
    assert "SFT model of /on/another/machine, which does not resolve here" in result.summary
    assert "--sft-base-model" in result.summary


@pytest.mark.parametrize("case", ["missing", "contradiction", "bad_record"])
def test_sft_comparison_mistakes_exit_2_naming_the_fix(lineage, tmp_path, capsys, case):
    _, merged, adapter = lineage
    data = write_jsonl(tmp_path / "eval.jsonl", eval_rows()[:1])
    args = ["evaluate", "--eval-dataset", str(data), "--model", adapter, "--output-dir", str(tmp_path / "o"),
            "--device", "cpu"]
    if case == "missing":
        args += ["--sft-base-model", str(tmp_path / "nowhere")]
        expected = "nowhere"
    elif case == "contradiction":
        args += ["--sft-base-model", merged, "--no-sft-comparison"]
        expected = "--sft-base-model"
    else:
        broken = tmp_path / "broken"
        shutil.copytree(merged, broken)
        (broken / RECORD_FILE).write_text('{"stage": "dpo"}')
        args += ["--large-model-reference", str(broken)]
        expected = f"{broken}/{RECORD_FILE}: not an SFT record"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_two_processes_give_the_three_columns_of_one_and_sharding_is_refused(lineage, tmp_path):
    """The unsharded multi-process path generates every column as one process does; a sharded base
    with an SFT comparison is refused before any model loads."""
    from test_multiprocess import _env, no_strays, run_rlhf

    _, _, adapter = lineage
    data = write_jsonl(tmp_path / "eval.jsonl", eval_rows())

    def args(out, devices, *extra):
        return ["evaluate", "--eval-dataset", str(data), "--model", adapter, "--output-dir", str(tmp_path / out),
                "--target-sequence-length", "6", "--batch-size", "1", "--device", "cpu", "--devices",
                str(devices), "--no-judge", *extra]

    evaluate(EvalConfig(eval_dataset=str(data), model=adapter, output_dir=str(tmp_path / "one"),
                        target_sequence_length=6, batch_size=1, device="cpu", judge=False))
    run_rlhf(args("two", 2))
    for name in ("base", "sft", "tuned"):
        one = (tmp_path / "one" / "predictions" / f"{name}.jsonl").read_text()
        assert (tmp_path / "two" / "predictions" / f"{name}.jsonl").read_text() == one and one
    no_strays(tmp_path / "two")
    done = subprocess.run([sys.executable, "-m", "rlhf", *args("sharded", 2, "--shard-base")], env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "not supported with a sharded base" in done.stderr
    assert "--no-sft-comparison" in done.stderr and not (tmp_path / "sharded" / "report.html").exists()


def test_classifier_metrics_with_an_sft_group():
    from rlhf.evaluate.classifiers import classifier_metrics
    m = classifier_metrics("pos@c", {"base": [0.2, 0.6], "sft": [0.4, 0.9], "tuned": [0.8, 0.7]})
    assert m["eval/classifier/pos@c/sft_mean"] == pytest.approx(0.65)
    assert m["eval/classifier/pos@c/sft_above_half"] == 0.5
    assert m["eval/classifier/pos@c/delta"] == pytest.approx(0.75 - 0.4)
    assert m["eval/classifier/pos@c/delta_vs_sft"] == pytest.approx(0.75 - 0.65)
    assert m["eval/classifier/pos@c/sft_delta_vs_base"] == pytest.approx(0.65 - 0.4)
    assert "eval/classifier/pos@c/delta_vs_sft" not in classifier_metrics("pos@c", {"base": [0.1], "tuned": [0.2]})


def test_judge_win_rates_over_sft_follow_the_judges_per_prompt_verdicts():
    """Real judge verdicts on written responses (the random models above all score 0 with the judge)."""
    from rlhf.data.canonical import EvalExample
    from rlhf.evaluate import report as R
    from rlhf.evaluate.inference import Generation
    from rlhf.evaluate.results import compute_results
    from rlhf.evaluate.run import judge_results

    posts = POSTS[:4]
    rows = [EvalExample(messages=[{"role": "user", "content": p}], instruction="Summarize in less than 20 words.")
            for p in posts]
    texts = {"base": ["food food food", "job", "Short post.", "puppy"],
             "sft": ["My roommate keeps eating my food.", "job offer", "Short post here.", "We adopted a puppy."],
             "tuned": ["My roommate keeps eating my food despite polite requests.", "job",
                       "Short post here.", "We adopted a puppy that barks all night."]}
    gens = {g: [Generation([1], [2, 3], t, True) for t in ts] for g, ts in texts.items()}
    verdicts = judge_results(rows, texts)
    results = compute_results(rows, gens, verdicts=verdicts, num_samples=4)
    m = results.metrics
    judged = {g: [row[g]["judge"] for row in results.per_prompt] for g in texts}
    assert judged == {g: [v.score for v in verdicts[g]] for g in texts}
    assert m["eval/judge_win_rate_vs_sft"] == M.win_rate(judged["tuned"], judged["sft"]) != 0.5
    assert m["eval/judge_sft_win_rate_vs_base"] == M.win_rate(judged["sft"], judged["base"]) != 0.5
    assert m["eval/judge_win_rate"] == M.win_rate(judged["tuned"], judged["base"])
    assert results.groups == ("base", "sft", "tuned")
    # The sample outlines the model the judge scores highest, of three; none on a tie at the top.
    titles = {"base": "Base", "sft": "SFT", "tuned": "Tuned"}
    best = [titles[max(texts, key=lambda g: judged[g][i])]
            if sorted(judged[g][i] for g in texts)[-2] < max(judged[g][i] for g in texts) else "" for i in range(4)]
    cells = Cells()
    cells.feed(R.render_html(results))
    assert cells.sides == [["Base", "SFT", "Tuned"]] * 4
    assert cells.winners == best and set(best) - {""}, (cells.winners, judged)
