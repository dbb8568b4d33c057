"""Validation of whole datasets (rlhf.data.validate): problems by file and line, warnings, statistics
and the outputs of a run, on files built in tmp_path and on a real Cloud Storage emulator."""

from __future__ import annotations

import gzip
import json
import math
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from rlhf import storage
from rlhf.data import canonical
from rlhf.data.stats import percentiles
from rlhf.data.validate import ValidateConfig, ValidationOutputs, run_validation

OUTPUT_FILES = {"preference.jsonl", "prompts.jsonl", "eval.jsonl", "stats.json", "summary.md",
                "summary.html"}
LINE = re.compile(r"^(\S+?):(\d+): (.+)$")


def google(i, choice=0, **extra):
    return {"input_text": f"post number {i}", "candidate_0": f"summary {i} a",
            "candidate_1": f"summary {i} b", "choice": choice, **extra}


def write(path: Path, rows) -> str:
    """Rows are dicts (one JSON line each) or str/bytes lines written as given."""
    data = b""
    for row in rows:
        if isinstance(row, dict) or isinstance(row, list):
            data += json.dumps(row).encode() + b"\n"
        elif isinstance(row, str):
            data += row.encode() + b"\n"
        else:
            data += row + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return str(path)


def validate(**kw) -> "ValidationReport":  # noqa: F821
    return run_validation(ValidateConfig(**kw))


def problems(report) -> list[str]:
    return [str(p) for p in report.problems.shown]


def warnings(report) -> list[str]:
    return [str(p) for p in report.warnings.shown]


# ---------------------------------------------------------------------------------------------
# valid data and the outputs


def test_valid_run_writes_canonical_datasets_stats_and_summaries(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(0, 0), google(1, 1)])
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": "write a poem"}])
    evals = write(tmp_path / "eval.jsonl", [{"input_text": "held out", "reference": "ref"}])
    out = tmp_path / "out"
    report = validate(preference_dataset=pref, prompt_dataset=prompts, eval_dataset=evals,
                      output_dir=str(out), instruction="Summarize:")
    assert report.ok, problems(report)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    pairs = canonical.read_preference_pairs(str(out / "preference.jsonl"))
    assert [(p.chosen, p.rejected) for p in pairs] == [("summary 0 a", "summary 0 b"),
                                                       ("summary 1 b", "summary 1 a")]
    assert pairs[0].source == f"{pref}:1" and pairs[1].source == f"{pref}:2"
    assert pairs[0].instruction == "Summarize:"
    assert canonical.prompt_text(pairs[0]) == "Summarize:\n\npost number 0"
    [prompt] = canonical.read_prompts(str(out / "prompts.jsonl"))
    assert prompt.messages == [{"role": "user", "content": "write a poem"}]
    [example] = canonical.read_eval_examples(str(out / "eval.jsonl"))
    assert (example.reference, example.chosen) == ("ref", None)

    stats = json.loads((out / "stats.json").read_text())
    assert stats == report.stats
    assert stats["datasets"]["preference"]["rows"] == 2
    assert stats["datasets"]["preference"]["pairs"] == 2
    assert stats["datasets"]["preference"]["choice"] == {"0": 1, "1": 1, "fraction_1": 0.5}
    assert stats["datasets"]["prompt"]["format"] == "prompt"
    assert report.outputs.preference == str(out / "preference.jsonl")
    md = (out / "summary.md").read_text()
    assert "| preference | google_text | 1 | 2 | 2 | 0 | 1/1 |" in md
    html = (out / "summary.html").read_text()
    assert "<td>google_text</td>" in html and "Summarize:" in html


def test_datasets_not_given_are_written_empty(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(0)])
    out = tmp_path / "out"
    report = validate(preference_dataset=pref, output_dir=str(out))
    assert report.ok
    assert (out / "prompts.jsonl").read_text() == ""
    assert (out / "eval.jsonl").read_text() == ""
    assert set(report.stats["datasets"]) == {"preference"}


def test_nothing_is_written_without_an_output_dir(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(0)])
    report = validate(preference_dataset=pref)
    assert report.ok and report.outputs is None
    assert [p.name for p in tmp_path.iterdir()] == ["pref.jsonl"]


def test_explicit_output_uris(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(0)])
    outputs = ValidationOutputs(*(str(tmp_path / "o" / name) for name in "abcdef"))
    report = run_validation(ValidateConfig(preference_dataset=pref), outputs)
    assert report.ok
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == list("abcdef")
    assert len(canonical.read_preference_pairs(outputs.preference)) == 1


def test_invalid_data_writes_no_output_at_all(tmp_path):
    # The preference data is fine and read first; the bad eval data must still discard it.
    pref = write(tmp_path / "pref.jsonl", [google(i) for i in range(50)])
    evals = write(tmp_path / "eval.jsonl", [{"input_text": "ok"}, {"input_text": ""}])
    out = tmp_path / "out"
    report = validate(preference_dataset=pref, eval_dataset=evals, output_dir=str(out))
    assert not report.ok
    assert problems(report) == [f"{evals}:2: `input_text` is empty; expected a non-empty string (the prompt)"]
    assert report.outputs is None
    assert not out.exists() or list(out.iterdir()) == []


def test_every_format_validates(tmp_path):
    chat = [{"author": "user", "content": "hello"}]
    datasets = {
        "google_text": [google(0)],
        "google_chat": [{"messages": chat, "candidate_0": "a", "candidate_1": "b", "choice": 1}],
        "trl": [{"prompt": "p", "chosen": "a", "rejected": "b"}],
        "ranked": [{"input_text": "p", "candidates": ["a", "b", "c", "d"], "ranking": [3, 2, 1, 0]}],
    }
    for name, rows in datasets.items():
        out = tmp_path / name
        report = validate(preference_dataset=write(tmp_path / f"{name}.jsonl", rows), output_dir=str(out))
        assert report.ok, problems(report)
        assert report.stats["datasets"]["preference"]["format"] == name
        pairs = canonical.read_preference_pairs(str(out / "preference.jsonl"))
        assert len(pairs) == (6 if name == "ranked" else 1)


def test_gzip_bom_and_blank_lines(tmp_path):
    pref = write(tmp_path / "pref.jsonl.gz", [b"\xef\xbb\xbf" + json.dumps(google(0)).encode(), "",
                                              "   ", json.dumps(google(1)), ""])
    report = validate(preference_dataset=pref)
    assert report.ok, problems(report)
    assert report.stats["datasets"]["preference"]["rows"] == 2
    bad = write(tmp_path / "bad.jsonl.gz", [google(0), "", "{oops"])
    assert problems(validate(preference_dataset=bad)) == [
        f"{bad}:3: invalid JSON: Expecting property name enclosed in double quotes at column 2; "
        "expected one complete JSON object per line"]


# ---------------------------------------------------------------------------------------------
# problems, one by one, with their line


def test_invalid_json_reports_line_and_column(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), google(1), '  {"input_text": "a", "choice": 1,}'])
    report = validate(preference_dataset=pref)
    assert problems(report) == [f"{pref}:3: invalid JSON: Expecting property name enclosed in double "
                                "quotes at column 35; expected one complete JSON object per line"]


def test_line_that_is_not_an_object(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), '"just text"'])
    [msg] = problems(validate(preference_dataset=pref))
    assert msg.startswith(f"{pref}:2: the line is the string \"just text\", not a JSON object; expected")


def test_field_problems_carry_file_and_line(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), google(1, choice="1"), google(2, candidate_1=None),
                                        google(3, candidate_1="summary 3 a")])
    assert problems(validate(preference_dataset=pref)) == [
        f'{pref}:2: `choice` is the string "1"; expected the integer 0 (candidate_0 is preferred) or 1 '
        '(candidate_1 is preferred), without quotes: write "choice": 1',
        f"{pref}:3: `candidate_1` is null; expected a non-empty string (the second response)",
        f"{pref}:4: `candidate_0` and `candidate_1` are identical; expected two different responses "
        "to compare",
    ]


def test_non_utf8_bytes_are_reported_by_line(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), b'{"input_text": "caf\xe9", "candidate_0": "a"}',
                                        google(2)])
    assert problems(validate(preference_dataset=pref)) == [
        f"{pref}:2: the line is not valid UTF-8 (byte 0xe9 at column 20); expected UTF-8 text: re-save "
        "the file as UTF-8"]


def test_empty_file(tmp_path):
    pref = tmp_path / "p.jsonl"
    pref.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n")
    report = validate(preference_dataset=str(pref), prompt_dataset=str(blank))
    assert problems(report) == [
        f"{pref}:1: the file is empty; expected JSON Lines with one row per line, like "
        '{"input_text": "...", "candidate_0": "...", "candidate_1": "...", "choice": 0}',
        f'{blank}:1: the file is empty; expected JSON Lines with one row per line, like {{"input_text": "..."}}',
    ]


def test_whole_file_json_array_gives_one_problem(tmp_path):
    pref = tmp_path / "p.json"
    pref.write_text(json.dumps([google(i) for i in range(100)], indent=2))
    assert problems(validate(preference_dataset=str(pref))) == [
        f"{pref}:1: the file is a JSON array; expected JSON Lines: one object per line, no enclosing "
        "[ ] (convert with: jq -c '.[]' IN > OUT)"]


def test_pretty_printed_json_gives_one_problem(tmp_path):
    pref = tmp_path / "p.json"
    pref.write_text("\n" + json.dumps(google(0), indent=2) + "\n" + json.dumps(google(1), indent=2))
    [msg] = problems(validate(preference_dataset=str(pref)))
    assert msg.startswith(f"{pref}:2: the file looks like pretty-printed JSON")


def test_mixed_formats_name_the_line_and_the_first_format(tmp_path):
    trl = {"prompt": "p", "chosen": "a", "rejected": "b"}
    pref = write(tmp_path / "p.jsonl", [google(0), google(1), trl, trl, google(4), trl])
    assert problems(validate(preference_dataset=pref)) == [
        f"{pref}:{n}: the format changes here to TRL (prompt, chosen, rejected) but line 1 is Google "
        "text (input_text, candidate_0, candidate_1, choice); expected one format in the whole dataset"
        for n in (3, 6)]


def test_mixed_formats_across_the_files_of_a_glob(tmp_path):
    a = write(tmp_path / "d" / "a.jsonl", [google(0)])
    b = write(tmp_path / "d" / "b.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    [msg] = problems(validate(preference_dataset=str(tmp_path / "d" / "*.jsonl")))
    assert msg.startswith(f"{b}:1: the format changes here to TRL (prompt, chosen, rejected) but {a}:1 is "
                          "Google text")


def test_glob_reports_each_file_by_its_own_uri(tmp_path):
    a = write(tmp_path / "d" / "part-0.jsonl", [google(0), google(1, choice=2)])
    b = write(tmp_path / "d" / "part-1.jsonl", [google(2, input_text=""), google(3)])
    report = validate(preference_dataset=str(tmp_path / "d" / "part-*.jsonl"), output_dir=str(tmp_path / "o"))
    assert [LINE.match(p).group(1, 2) for p in problems(report)] == [(a, "2"), (b, "1")]
    fixed = write(tmp_path / "d" / "part-0.jsonl", [google(0), google(1)])
    write(tmp_path / "d" / "part-1.jsonl", [google(2), google(3)])
    report = validate(preference_dataset=str(tmp_path / "d" / "part-*.jsonl"), output_dir=str(tmp_path / "o"))
    assert report.ok
    assert report.stats["datasets"]["preference"]["files"] == [fixed, b]
    sources = [p.source for p in canonical.read_preference_pairs(str(tmp_path / "o" / "preference.jsonl"))]
    assert sources == [f"{a}:1", f"{a}:2", f"{b}:1", f"{b}:2"]


def test_glob_matching_nothing_and_missing_file(tmp_path):
    pattern = str(tmp_path / "nothing-*.jsonl")
    missing = str(tmp_path / "missing.jsonl")
    report = validate(preference_dataset=pattern, eval_dataset=missing)
    lines = problems(report)
    assert len(lines) == 2
    assert lines[0].startswith(f"{pattern}: ") and "match" in lines[0]
    assert lines[1].startswith(f"{missing}: ") and re.search(r"no such|not found|does not exist", lines[1])


def test_corrupt_gzip_is_a_problem_not_a_crash(tmp_path):
    pref = tmp_path / "p.jsonl.gz"
    pref.write_bytes(gzip.compress(b"\n".join(json.dumps(google(i)).encode() for i in range(1000)))[:200])
    report = validate(preference_dataset=str(pref))
    assert not report.ok
    assert problems(report)[-1].startswith(str(pref))


def test_only_the_first_problems_are_shown_then_a_count(tmp_path):
    pref = write(tmp_path / "p.jsonl", ["nonsense"] * 30 + [google(0)])
    report = validate(preference_dataset=pref, max_errors=5)
    assert report.problems.count == 30
    lines = report.problems.lines()
    assert [LINE.match(x).group(2) for x in lines[:5]] == ["1", "2", "3", "4", "5"]
    assert lines[5:] == ["... and 25 more problems"]
    assert report.problem_text().splitlines()[0] == "30 problem(s) found in the datasets:"


def test_every_dataset_is_checked_even_after_a_bad_one(tmp_path):
    pref = write(tmp_path / "p.jsonl", ["nonsense"])
    prompts = write(tmp_path / "q.jsonl", [{"input_text": None}])
    evals = write(tmp_path / "e.jsonl", [{"input_text": "x", "reference": 5}])
    files = [LINE.match(p).group(1) for p in problems(validate(
        preference_dataset=pref, prompt_dataset=prompts, eval_dataset=evals))]
    assert files == [pref, prompts, evals]


@pytest.mark.parametrize("kw,message", [
    ({"preference_dataset": ""}, "no dataset given: pass any of --preference-dataset, --prompt-dataset"),
    ({"max_errors": 0}, "--max-errors 0: must be a positive integer"),
    ({"prompt_sequence_length": 0}, "--prompt-sequence-length 0: must be a positive integer"),
])
def test_bad_configuration_is_a_user_error(tmp_path, kw, message):
    from rlhf.errors import UserError

    with pytest.raises(UserError, match=message):
        validate(**{"preference_dataset": write(tmp_path / "p.jsonl", [google(0)]), **kw})


# ---------------------------------------------------------------------------------------------
# warnings


def test_exact_duplicates_are_warnings_not_errors(tmp_path):
    row = google(0)
    reordered = '{"choice": 0, "candidate_1": "summary 0 b", "candidate_0": "summary 0 a", "input_text": "post number 0"}'
    pref = write(tmp_path / "p.jsonl", [row, google(1), row, reordered])
    report = validate(preference_dataset=pref)
    assert report.ok
    assert warnings(report) == [
        f"{pref}:{n}: warning: exact duplicate of line 1; a repeated row counts twice in training"
        for n in (3, 4)]
    assert report.stats["datasets"]["preference"]["duplicates"] == 2
    assert report.metrics["data/preference_duplicates"] == 2.0


def test_duplicates_across_files_name_the_other_file(tmp_path):
    a = write(tmp_path / "d" / "a.jsonl", [google(0)])
    b = write(tmp_path / "d" / "b.jsonl", [google(0)])
    report = validate(preference_dataset=str(tmp_path / "d" / "*.jsonl"))
    assert warnings(report) == [f"{b}:1: warning: exact duplicate of {a}:1; a repeated row counts twice "
                                "in training"]


def test_eval_prompts_seen_in_training_are_warned_about(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), google(1)])
    prompts = write(tmp_path / "q.jsonl", [{"prompt": "a prompt"}])
    evals = write(tmp_path / "e.jsonl", [{"input_text": "new"}, {"input_text": "post number 1"},
                                         {"input_text": "a prompt"}])
    report = validate(preference_dataset=pref, prompt_dataset=prompts, eval_dataset=evals)
    assert report.ok
    assert warnings(report) == [
        f"{evals}:2: warning: this eval prompt also appears in the training data ({pref}:2); expected "
        "held-out prompts, or the evaluation overstates quality",
        f"{evals}:3: warning: this eval prompt also appears in the training data ({prompts}:1); expected "
        "held-out prompts, or the evaluation overstates quality"]
    assert report.stats["eval_prompts_in_training"] == 2
    assert report.metrics["data/eval_prompts_in_training"] == 2.0


def test_unknown_fields_are_warned_about_once(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), google(1, id=1), google(2, id=2, lang="en")])
    report = validate(preference_dataset=pref)
    assert report.ok
    assert warnings(report) == [f"{pref}:2: warning: unknown field(s) `id`, `lang` are ignored (first seen "
                                "here); expected only the fields of the dataset's format and `instruction`"]


def test_warnings_are_capped_and_counted(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0)] * 12)
    report = validate(preference_dataset=pref, max_errors=4)
    assert report.warnings.count == 11
    assert report.warnings.lines()[-1] == "... and 7 more warnings"
    assert report.stats["warnings"]["count"] == 11


# ---------------------------------------------------------------------------------------------
# statistics


def test_length_percentiles_and_choice_balance(tmp_path):
    rows = [{"input_text": "x" * n, "candidate_0": "y" * (2 * n), "candidate_1": "z" * (2 * n + 1),
             "choice": int(n % 4 == 0)} for n in range(1, 101)]
    pref = write(tmp_path / "p.jsonl", rows)
    ds = validate(preference_dataset=pref).stats["datasets"]["preference"]
    assert ds["chars"]["prompt"] == {"count": 100, "p50": 50, "p90": 90, "p99": 99, "max": 100, "mean": 50.5}
    assert ds["chars"]["response"]["count"] == 200
    assert ds["chars"]["response"]["max"] == 201
    assert ds["choice"] == {"0": 75, "1": 25, "fraction_1": 0.25}
    assert "tokens" not in ds


def test_prompt_lengths_include_the_instruction(tmp_path):
    pref = write(tmp_path / "p.jsonl", [{"input_text": "abcd", "candidate_0": "a", "candidate_1": "b",
                                         "choice": 0}])
    ds = validate(preference_dataset=pref, instruction="12345").stats["datasets"]["preference"]
    assert ds["chars"]["prompt"]["max"] == len("12345\n\nabcd")


def test_ranked_rows_count_pairs_and_each_candidate_once(tmp_path):
    pref = write(tmp_path / "p.jsonl", [{"input_text": "q", "candidates": ["a", "bb", "ccc"],
                                         "ranking": [0, 1, 2]}] * 1 + [
        {"input_text": "r", "candidates": ["a", "b"], "ranking": [1, 0]}])
    report = validate(preference_dataset=pref)
    ds = report.stats["datasets"]["preference"]
    assert (ds["rows"], ds["pairs"], ds["chars"]["response"]["count"]) == (2, 4, 5)
    assert report.metrics["data/preference_pairs"] == 4.0
    assert report.metrics["data/preference_rows"] == 2.0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 99, 100, 101, 1000])
def test_percentiles_match_numpy_nearest_rank(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 10_000, size=n).tolist()
    got = percentiles(values)
    for p in (50, 90, 99):
        assert got[f"p{p}"] == np.percentile(values, p, method="inverted_cdf")
    assert got["max"] == max(values)
    assert math.isclose(got["mean"], sum(values) / n, abs_tol=0.01)


def test_token_statistics_and_truncation_with_a_tokenizer(tmp_path, word_tokenizer):
    tokenizer = word_tokenizer
    rows = [{"input_text": " ".join(["w"] * n), "candidate_0": " ".join(["a"] * n),
             "candidate_1": "b", "choice": 0} for n in range(1, 601)]  # more than one batch
    pref = write(tmp_path / "p.jsonl", rows)
    report = validate(preference_dataset=pref, tokenizer=tokenizer, instruction="two words",
                      prompt_sequence_length=500, target_sequence_length=64)
    ds = report.stats["datasets"]["preference"]
    # prompt = "two words\n\nw w ..." -> n + 2 tokens
    assert ds["tokens"]["prompt"] == percentiles([n + 2 for n in range(1, 601)])
    assert ds["tokens"]["response"] == percentiles(list(range(1, 601)) + [1] * 600)
    assert ds["truncated"] == {"prompt": 600 - 498, "response": 600 - 64}
    assert report.metrics["data/preference_prompts_truncated"] == 102.0
    assert report.metrics["data/preference_responses_truncated"] == 536.0
    assert report.stats["notes"] == []


def test_metrics_are_flat_namespaced_numbers(tmp_path):
    pref = write(tmp_path / "p.jsonl", [google(0), google(1, 1)])
    evals = write(tmp_path / "e.jsonl", [{"input_text": "x"}])
    metrics = validate(preference_dataset=pref, eval_dataset=evals).metrics
    assert all(k.startswith("data/") and isinstance(v, float) for k, v in metrics.items())
    assert metrics["data/preference_pairs"] == 2.0
    assert metrics["data/preference_choice_1_fraction"] == 0.5
    assert metrics["data/eval_rows"] == 1.0
    assert metrics["data/warnings"] == 0.0


def test_a_large_file_is_streamed_not_loaded(tmp_path):
    filler = "x" * 2000
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(8_000):
            f.write(json.dumps({"input_text": f"{i} {filler}", "candidate_0": f"a{i}", "candidate_1": f"b{i}",
                                "choice": i % 2}) + "\n")
    size = path.stat().st_size
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        report = validate(preference_dataset=str(path), output_dir=str(out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.stats["datasets"]["preference"]["pairs"] == 8_000
    assert size > 16_000_000
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte file"
    assert sum(1 for _ in open(out / "preference.jsonl")) == 8_000


# ---------------------------------------------------------------------------------------------
# Cloud Storage (a real emulator server)


def _put(uri: str, rows) -> str:
    with storage.open_write(uri, "wb") as f:
        for row in rows:
            f.write((json.dumps(row) if isinstance(row, dict) else row).encode() + b"\n")
    return uri


def test_gcs_glob_is_validated_file_by_file(gcs_prefix):
    a = _put(f"{gcs_prefix}/data/part-0.jsonl", [google(0), google(1)])
    b = _put(f"{gcs_prefix}/data/part-1.jsonl", [google(2), google(3, choice=True)])
    _put(f"{gcs_prefix}/data/other.txt", ["not matched"])
    report = validate(preference_dataset=f"{gcs_prefix}/data/part-*.jsonl")
    [msg] = problems(report)
    assert msg.startswith(f"{b}:2: `choice` is true;")
    _put(b, [google(2), google(3)])
    out = f"{gcs_prefix}/out"
    report = validate(preference_dataset=f"{gcs_prefix}/data/part-*.jsonl", output_dir=out)
    assert report.ok, problems(report)
    assert report.stats["datasets"]["preference"]["files"] == [a, b]
    pairs = canonical.read_preference_pairs(f"{out}/preference.jsonl")
    assert [p.source for p in pairs] == [f"{a}:1", f"{a}:2", f"{b}:1", f"{b}:2"]
    assert storage.read_json(f"{out}/stats.json")["datasets"]["preference"]["pairs"] == 4


def test_gcs_invalid_data_leaves_no_output_objects(gcs_prefix):
    pref = _put(f"{gcs_prefix}/p.jsonl", [google(0), "{bad"])
    report = validate(preference_dataset=pref, output_dir=f"{gcs_prefix}/out")
    assert problems(report)[0].startswith(f"{pref}:2: invalid JSON")
    assert not storage.exists(f"{gcs_prefix}/out/preference.jsonl")
    assert not storage.exists(f"{gcs_prefix}/out/stats.json")


def test_gcs_missing_object_bucket_and_empty_glob(gcs_emulator, gcs_prefix):
    missing = f"{gcs_prefix}/missing.jsonl"
    no_bucket = "gs://no-such-bucket-for-rlhf-tests/p.jsonl"
    nothing = f"{gcs_prefix}/none-*.jsonl"
    report = validate(preference_dataset=missing, prompt_dataset=no_bucket, eval_dataset=nothing)
    lines = problems(report)
    assert [line.split(": ")[0] for line in lines] == [missing, no_bucket, nothing]
    assert all(len(line.split(": ", 1)[1]) > 10 for line in lines)
    assert "bucket no-such-bucket-for-rlhf-tests" in lines[1].split(": ", 1)[1]
