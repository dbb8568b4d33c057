"""`rlhf label` on a tiny random model: the ranked rows pass `rlhf validate`, rankings follow the
bundled constitution judge or a user's `module:function` judge, bad judges are clear errors that leave
no file behind, identical candidates are dropped, gs:// output works; and the whole pipeline runs
locally with AI feedback in place of a preference dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import label_judges
from rlhf import cli, samples, storage
from rlhf.data.validate import ValidateConfig, run_validation
from rlhf.label import LabelConfig, LabelStats, constitution_judge, distinct, label, ranking_from, without_ties
from test_reward_helpers import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("label") / "model"))


def _prompts(tmp_path: Path, n: int) -> str:
    """The first `n` bundled sample prompts."""
    path = tmp_path / "prompts.jsonl"
    with open(samples.prompt_dataset()) as f:
        path.write_text("".join(line for line in list(f)[:n]))
    return str(path)


def _config(tmp_path, model, **kw) -> LabelConfig:
    values = dict(prompt_dataset=samples.prompt_dataset(), output=str(tmp_path / "labels.jsonl"),
                  large_model_reference=model, candidates=3, max_prompts=3, instruction=samples.INSTRUCTION,
                  target_sequence_length=10, device="cpu", progress=False)
    return LabelConfig(**{**values, **kw})


def _rows(uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(uri).splitlines()]


def _validates(uri: str) -> dict:
    report = run_validation(ValidateConfig(preference_dataset=uri))
    assert report.ok, report.problem_text()
    return report.stats["datasets"]["preference"]


def test_labels_pass_validation(tmp_path, tiny_model, one_thread):
    config = _config(tmp_path, tiny_model, judge="label_judges:longest_first")
    stats = label(config)
    rows = _rows(config.output)
    assert stats.prompts == 3 and stats.rows == len(rows) == 3  # max_prompts
    checked = _validates(config.output)
    assert checked["format"] == "ranked" and checked["pairs"] == stats.pairs > 0
    assert stats.pairs == sum(len(r["candidates"]) * (len(r["candidates"]) - 1) // 2 for r in rows)
    with open(samples.prompt_dataset()) as f:
        posts = [json.loads(line)["input_text"] for line in list(f)[:3]]
    for row, post in zip(rows, posts):
        assert row["input_text"] == post and row["instruction"] == samples.INSTRUCTION
        lengths = [len(row["candidates"][i]) for i in row["ranking"]]
        assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(lengths)  # ties dropped


def test_the_bundled_judge_drops_ties(tmp_path, tiny_model, one_thread):
    """A random model writes word salad, which the constitution scores 0: every candidate ties, so no
    pair is written (a pair between equals would teach the reward model noise)."""
    config = _config(tmp_path, tiny_model)  # no --judge: the bundled one
    stats = label(config)
    assert stats.rows == 0 and stats.skipped["all_tied"] == 3 and stats.mean_best_score == 0.0
    assert stats.dropped_candidates["tie"] == 3 * 2  # each prompt keeps one of its 3
    assert storage.read_text(config.output) == ""


def test_without_ties_keeps_the_best_ranked_of_equals():
    candidates = ["a a a", "b", "c c", "d"]
    ranking, scores = ranking_from([0.5, 0.2, 0.5, 0.2], candidates, "x")
    assert ranking == [2, 0, 1, 3]  # equal scores: the shorter first, then alphabetically
    stats = LabelStats()
    assert without_ties(candidates, ranking, scores, stats) == (["b", "c c"], [1, 0])
    assert stats.dropped_candidates["tie"] == 2


def test_the_bundled_judge_ranks_the_sample_pairs_as_they_were_labelled():
    """The sample preference pairs were labelled by the same constitution: the ranking step must agree."""
    with open(samples.preference_dataset()) as f:
        rows = [json.loads(line) for line in list(f)[:40]]
    for row in rows:
        candidates = [row["candidate_0"], row["candidate_1"]]
        ranking, scores = ranking_from(constitution_judge(row["input_text"], candidates, samples.INSTRUCTION),
                                       candidates, "sample")
        assert ranking[0] == row["choice"], (row["input_text"][:60], scores)


def test_a_user_judge_by_module_function_through_the_cli(tmp_path, tiny_model, one_thread, capsys):
    out = tmp_path / "labels.jsonl"
    code = cli.main(["label", "--prompt-dataset", samples.prompt_dataset(), "--output", str(out),
                     "--large-model-reference", tiny_model, "--candidates", "4", "--max-prompts", "2",
                     "--target-sequence-length", "10", "--device", "cpu", "--judge", "label_judges:longest_first"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["rows"] == 2
    assert "labelling prompts" in captured.err  # the progress bar
    rows = _rows(str(out))
    assert len(rows) == 2
    for row in rows:
        lengths = [len(row["candidates"][i]) for i in row["ranking"]]
        assert lengths == sorted(lengths, reverse=True)
    _validates(str(out))


def test_a_judge_may_return_a_ranking_and_take_the_instruction(tmp_path, tiny_model, one_thread):
    config = _config(tmp_path, tiny_model, judge="label_judges:reverse_order", max_prompts=2)
    label(config)
    assert [r["ranking"] for r in _rows(config.output)] == [[2, 1, 0], [2, 1, 0]]
    label_judges.CALLS.clear()
    config = _config(tmp_path, tiny_model, judge="label_judges:with_instruction", max_prompts=1)
    label(config)
    (prompt, candidates, instruction), = label_judges.CALLS
    row, = _rows(config.output)
    assert prompt == row["input_text"] and not prompt.startswith(samples.INSTRUCTION)
    assert instruction == samples.INSTRUCTION and candidates == row["candidates"] and row["ranking"] == [0, 1, 2]


@pytest.mark.parametrize("judge, message", [
    ("no_such_module_xyz:judge", "no module named 'no_such_module_xyz'"),
    ("label_judges:missing", "has no attribute 'missing'"),
    ("label_judges:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable"),
    ("label_judges", "expected module:function"),
    ("label_judges:one_score_short", "prompts.jsonl:1: the judge returned [1.0, 1.0]; expected a list of 3"),
    ("label_judges:not_a_permutation", "prompts.jsonl:1: the judge's ranking [0, 0, 0] is not a permutation"),
    ("label_judges:broken", "prompts.jsonl:1: the judge label_judges:broken failed: ConnectionError: "
                            "endpoint unreachable"),
])
def test_a_bad_judge_is_a_clear_error_and_writes_nothing(tmp_path, tiny_model, one_thread, capsys, judge, message):
    out = tmp_path / "labels.jsonl"
    code = cli.main(["label", "--prompt-dataset", samples.prompt_dataset(), "--output", str(out),
                     "--large-model-reference", tiny_model, "--candidates", "3", "--max-prompts", "2",
                     "--target-sequence-length", "6", "--device", "cpu", "--no-progress", "--judge", judge])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())  # atomic: no partial or temporary file


def test_identical_candidates_are_dropped_and_a_prompt_without_two_is_skipped(tmp_path, tiny_model, one_thread):
    stats = LabelStats()
    assert distinct(["a b", " a b ", "", "c", "a b", "  "], stats) == ["a b", "c"]
    assert stats.dropped_candidates == {"empty": 2, "duplicate": 2, "tie": 0}
    # Near-greedy sampling: the K candidates of each prompt are one text (the tiny model's is empty).
    config = _config(tmp_path, tiny_model, temperature=1e-6, max_prompts=2)
    stats = label(config)
    assert stats.rows == 0 and stats.skipped["fewer_than_2_distinct"] == 2
    assert sum(stats.dropped_candidates.values()) >= 2 * 2  # each prompt lost 2 or 3 of its 3
    assert storage.read_text(config.output) == ""


def test_labels_written_to_cloud_storage(tmp_path, tiny_model, one_thread, gcs_prefix):
    config = _config(tmp_path, tiny_model, output=f"{gcs_prefix}/ai/labels.jsonl", max_prompts=2,
                     judge="label_judges:longest_first")
    label(config)
    assert len(_rows(config.output)) == 2
    _validates(config.output)


def test_run_local_refuses_an_empty_preference_dataset_without_ai_feedback(tmp_path, capsys):
    code = cli.main(["run-local", "--pipeline-root", str(tmp_path / "root"), "--preference-dataset", ""])
    err = capsys.readouterr().err
    assert code == 2
    assert "'preference_dataset' is empty" in err and "ai_feedback=true" in err


@pytest.mark.slow
def test_the_pipeline_runs_locally_with_ai_feedback_instead_of_preference_data(
        tiny_model, tmp_path, monkeypatch, capsys):
    import tempfile
    from rlhf.commands.run_local import find_outputs
    from test_pipeline import TINY_SETTINGS

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # kfp's leftovers stay here
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the tasks import label_judges
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--preference-dataset", "",
                     "--prompt-dataset", _prompts(tmp_path, 4), "--eval-dataset", "",
                     "--instruction", samples.INSTRUCTION, "--model", tiny_model, *TINY_SETTINGS,
                     "--parameter", "ai_feedback=true",
                     "--parameter", 'ai_feedback_options={"candidates": 3, "judge": "label_judges:longest_first"}'])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    run, = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    outputs = find_outputs(run)
    labels = [json.loads(line) for line in outputs["ai-feedback-labels/ranked_labels"].read_text().splitlines()]
    pairs = outputs["ai-feedback-labels/preference_data"].read_text().splitlines()
    assert outputs["validate-inputs/preference_data"].read_text() == ""  # none given: labelled after validation
    assert len(labels) == 4 and len(pairs) == sum(len(r["candidates"]) * (len(r["candidates"]) - 1) // 2
                                                  for r in labels)
    assert {json.loads(p)["messages"][0]["content"] for p in pairs} == {r["input_text"] for r in labels}
    assert "tune-policy/policy_adapter" in outputs
    assert "AI-feedback labels, ranked" in stdout  # listed at the end


def test_the_label_stage_hands_validated_preference_pairs_on(tmp_path):
    from kfp import dsl
    from components.label import ai_feedback_labels

    validated = tmp_path / "validated.jsonl"
    validated.write_text('{"pair": 1}\n')
    common = dict(prompt_dataset=samples.prompt_dataset(), large_model_reference="no-such-model",
                  prompt_sequence_length=64, target_sequence_length=8, seed=0, options={})

    def run(ai_feedback: bool, given: Path) -> bool:
        outputs = {name: dsl.Dataset(name=name, uri=str(tmp_path / name), metadata={})
                   for name in ("preference_data", "ranked_labels")}
        labelled = ai_feedback_labels.python_func(
            validated_preferences=dsl.Dataset(name="v", uri=str(given), metadata={}), ai_feedback=ai_feedback,
            **outputs, **common)
        assert (tmp_path / "preference_data").read_text() == given.read_text()
        assert (tmp_path / "ranked_labels").read_text() == ""
        return labelled

    # Pairs given, or no ai_feedback: nothing is labelled (no model is loaded).
    assert run(ai_feedback=True, given=validated) is False
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run(ai_feedback=False, given=empty) is False


def test_submit_refuses_an_empty_preference_dataset_unless_ai_feedback(tmp_path):
    from rlhf import parameters
    from rlhf.commands.compile import compile_pipeline
    from rlhf.errors import UserError

    template = parameters.load_template(compile_pipeline("vertex", str(tmp_path / "vertex.yaml")))
    given = ["prompt_dataset=gs://my-bucket/prompts.jsonl", "preference_dataset=",
             "large_model_reference=smollm2-135m-instruct"]
    with pytest.raises(UserError, match="'preference_dataset' is empty: give a preference JSONL or set "
                                        "ai_feedback=true"):
        parameters.resolve_parameters(template, None, given, remote="vertex")
    values = parameters.resolve_parameters(template, None, given + ["ai_feedback=true"], remote="vertex")
    assert values["preference_dataset"] == "" and values["ai_feedback"] is True
    with pytest.raises(UserError, match="ai_feedback_options.judge 'nocolon': expected module:function"):
        parameters.resolve_parameters(template, None, given + ["ai_feedback=true",
                                                               'ai_feedback_options={"judge": "nocolon"}'])
