"""`rlhf evaluate` end to end on a tiny model: a real (tiny) reward model trained by the reward step,
the judge, raw and canonical eval data, the outputs' shapes and the CLI's exit codes."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.data import canonical
from rlhf.errors import UserError
from rlhf.evaluate.config import EvalConfig
from rlhf.evaluate.run import evaluate
from test_eval_inference import POSTS, built_once, tiny  # noqa: F401  (fixture)

INSTRUCTION = "Summarize in less than 20 words."


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_rows() -> list[dict]:
    """Raw user eval rows (Google text format), some with a preference pair, some with a reference."""
    rows = []
    for i, post in enumerate(POSTS[:4]):
        row = {"input_text": post, "instruction": INSTRUCTION}
        if i % 2 == 0:
            row.update(candidate_0="A short summary of the post.", candidate_1="no no no no", choice=0)
        if i != 3:
            row["reference"] = f"The poster describes a problem ({i})."
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def tiny_reward_model(tiny, tmp_path_factory):
    """A reward model trained for a few steps by the reward step itself on the tiny base."""
    from rlhf.reward.config import RewardConfig
    from rlhf.reward.train import train_reward_model

    base_dir, _ = tiny

    def build(root: Path) -> None:
        pairs = [{"input_text": f"{POSTS[i % len(POSTS)]} ({i})", "candidate_0": "A short, kind summary.",
                  "candidate_1": "no no no no no", "choice": 0} for i in range(16)]
        write_jsonl(root / "pref.jsonl", pairs)
        train_reward_model(RewardConfig(
            preference_dataset=str(root / "pref.jsonl"), output_dir=str(root / "rm"),
            large_model_reference=base_dir, reward_model_train_steps=3, batch_size=4,
            gradient_accumulation_steps=1, checkpoint_every=0, eval_every=3, heldout_fraction=0.0,
            normalization_pairs=8, prompt_sequence_length=128, target_sequence_length=16, device="cpu"))

    return str(built_once(tmp_path_factory, "eval-reward", build) / "rm")


def _config(tmp_path, data, model, **kw) -> EvalConfig:
    return EvalConfig(eval_dataset=str(data), model=model, output_dir=str(tmp_path / "out"),
                      target_sequence_length=10, batch_size=3, device="cpu", **kw)


def test_evaluate_end_to_end(tmp_path, tiny, tiny_reward_model):  # noqa: F811
    base_dir, adapter_dir = tiny
    data = write_jsonl(tmp_path / "eval.jsonl", eval_rows())
    history = write_jsonl(tmp_path / "metrics.jsonl", [
        {"step": s, "reward/mean": 0.1 * s, "policy/kl": 0.02 * s} for s in range(1, 8)])
    result = evaluate(_config(tmp_path, data, adapter_dir, reward_model=tiny_reward_model,
                              training_history=str(history), num_report_samples=3))
    m = result.metrics
    out = tmp_path / "out"

    # Google bulk-inferrer rows, in input order, targets = reference or "".
    for name in ("base", "tuned"):
        rows = [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        assert rows[0]["inputs"]["inputs_pretokenized"] == f"{INSTRUCTION}\n\n{POSTS[0]}"
        assert rows[0]["inputs"]["targets_pretokenized"] == "The poster describes a problem (0)."
        assert rows[3]["inputs"]["targets_pretokenized"] == ""
    scores = [json.loads(line) for line in (out / "predictions" / "scores.jsonl").read_text().splitlines()]

    # Metrics agree with the per-prompt scores they summarize.
    from rlhf.evaluate import metrics as M
    for name in ("base", "tuned"):
        assert m[f"eval/judge_{name}_mean"] == pytest.approx(M.mean([s[name]["judge"] for s in scores]))
        assert m[f"eval/reward_{name}_mean"] == pytest.approx(M.mean([s[name]["reward"] for s in scores]))
        assert 0 <= m[f"eval/judge_{name}_mean"] <= 1
    assert m["eval/judge_win_rate"] == pytest.approx(
        M.win_rate([s["tuned"]["judge"] for s in scores], [s["base"]["judge"] for s in scores]))
    assert m["eval/kl_full"] > 0 and m["eval/kl_seq"] == pytest.approx(M.mean([s["kl_seq"] for s in scores]))
    assert m["eval/num_with_reference"] == 3 and 0 <= m["eval/rouge_l_tuned"] <= 1
    assert m["eval/reward_model/pairs"] == 2 and 0 <= m["eval/reward_model/accuracy"] <= 1
    hacking = m["eval/reward_delta"] > 1e-6 and m["eval/judge_delta"] < -1e-6
    assert m["eval/reward_hacking_alarm"] == float(hacking) and (result.alarm is not None) == hacking

    # Report, summary and metrics files.
    html = (out / "report.html").read_text()
    HTMLParser().feed(html)
    assert html.count('class="sample"') == 3 and html.count("<polyline") == 2
    assert f"{m['eval/judge_win_rate']:.1%}" in html
    md = (out / "summary.md").read_text()
    assert md == result.summary and f"{m['eval/judge_win_rate']:.1%}" in md
    assert "Classifier" not in md and not any(k.startswith("eval/classifier/") for k in m)  # pairwise: no classes
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval/kl"] == pytest.approx(m["eval/kl"])


def test_cli_prints_the_summary_for_canonical_data_without_reward_model(tmp_path, tiny, capsys):  # noqa: F811
    _, adapter_dir = tiny
    rows = [canonical.EvalExample(messages=[{"role": "user", "content": p}], source=f"x:{i}",
                                  instruction=INSTRUCTION) for i, p in enumerate(POSTS[:3])]
    data = tmp_path / "canonical.jsonl"
    canonical.write_jsonl(str(data), rows)
    code = main(["evaluate", "--eval-dataset", str(data), "--model", adapter_dir, "--output-dir",
                 str(tmp_path / "o"), "--target-sequence-length", "6", "--no-measure-kl", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.startswith("## Evaluation: tuned vs base on 3 eval prompts")
    assert "Judge win rate" in printed and "no reward model given" in printed
    assert (tmp_path / "o" / "report.html").exists()


@pytest.mark.parametrize("case", ["no_dataset", "bad_row", "missing_model", "bad_length", "missing_reward"])
def test_cli_user_mistakes_exit_2_with_a_clear_message(tmp_path, tiny, capsys, case):  # noqa: F811
    _, adapter_dir = tiny
    good = write_jsonl(tmp_path / "eval.jsonl", eval_rows())
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "fine"}, {"input_txt": "typo"}])
    args = {"--eval-dataset": str(good), "--model": adapter_dir, "--output-dir": str(tmp_path / "o"),
            "--device": "cpu"}
    expected = {"no_dataset": "--eval-dataset '': is required: give the eval JSONL", "bad_row": "bad.jsonl:2",
                "missing_model": "nowhere", "bad_length": "--target-sequence-length 0: must be a positive integer",
                "missing_reward": "not a trained reward model"}[case]
    if case == "no_dataset":
        del args["--eval-dataset"]
    elif case == "bad_row":
        args["--eval-dataset"] = str(bad)
    elif case == "missing_model":
        args["--model"] = str(tmp_path / "nowhere")
    elif case == "bad_length":
        args["--target-sequence-length"] = "0"
    else:
        args["--reward-model"] = str(tmp_path / "no-reward")
    code = main(["evaluate"] + [x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert code == 2
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert message and expected in err[err.index("error: "):] and "Traceback" not in err
    assert not (tmp_path / "o" / "report.html").exists()  # nothing half-written


def test_evaluate_reads_and_writes_cloud_storage(tmp_path, tiny, gcs_prefix):  # noqa: F811
    """Eval data, the adapter (as a PPO output directory holding `policy_adapter/` and its
    `metrics.jsonl`) and every output in gs:// (the storage emulator)."""
    from rlhf import storage

    base_dir, adapter_dir = tiny
    ppo_dir = f"{gcs_prefix}/ppo"
    storage.upload_dir(adapter_dir, f"{ppo_dir}/policy_adapter")
    storage.write_text(f"{ppo_dir}/metrics.jsonl",
                       "".join(json.dumps({"step": s, "reward/mean": s / 10, "policy/kl": s / 50}) + "\n"
                               for s in range(1, 5)))
    storage.write_text(f"{gcs_prefix}/eval.jsonl", "".join(json.dumps(r) + "\n" for r in eval_rows()))
    out = f"{gcs_prefix}/out"
    result = evaluate(EvalConfig(eval_dataset=f"{gcs_prefix}/eval.jsonl", model=ppo_dir, output_dir=out,
                                 large_model_reference=base_dir, target_sequence_length=4, max_examples=2,
                                 device="cpu"))
    assert result.metrics["eval/num_prompts"] == 2
    assert storage.read_text(f"{out}/summary.md") == result.summary
    html = storage.read_text(f"{out}/report.html")
    assert html.count("<polyline") == 2  # the PPO directory's own history was found and charted
    rows = storage.read_text(f"{out}/predictions/tuned.jsonl").splitlines()
    assert len(rows) == 2 and json.loads(rows[0])["inputs"]["inputs_pretokenized"].startswith(INSTRUCTION)


def test_config_from_dict_coerces_kfp_numbers_and_rejects_mistakes():
    # KFP hands dict parameters through protobuf Struct: every number arrives as a float.
    config = EvalConfig.from_dict({"batch_size": 4.0, "temperature": 1, "sampling": True, "seed": 3.0})
    assert (config.batch_size, config.temperature, config.seed) == (4, 1.0, 3)
    assert isinstance(config.batch_size, int) and isinstance(config.temperature, float)
    with pytest.raises(UserError, match="unknown evaluation setting.*max_exemples"):
        EvalConfig.from_dict({"max_exemples": 5})
    with pytest.raises(UserError, match="batch_size is '8'; expected int"):
        EvalConfig.from_dict({"batch_size": "8"})


def test_a_pairwise_reward_model_as_eval_classifier_is_a_clear_error(tiny_reward_model):
    """eval_classifiers needs classes to report a probability of; a pairwise reward model has none."""
    from rlhf.data.canonical import EvalExample
    from rlhf.errors import UserError
    from rlhf.evaluate.classifiers import score_all
    rows = [EvalExample(messages=[{"role": "user", "content": POSTS[0]}])]
    with pytest.raises(UserError, match="a pairwise reward model has no classes; give a classifier"):
        score_all([f"{tiny_reward_model}=1"], rows, {"base": ["A short, kind summary."]}, device="cpu")
