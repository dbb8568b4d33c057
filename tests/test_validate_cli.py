"""The `rlhf validate` contract, run as a user runs it (a subprocess): exit 0 with statistics for
valid data, exit 2 with `URI:LINE: message` lines on stderr and no traceback for invalid or missing
data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rlhf
from rlhf import storage

PROBLEM = re.compile(r"^(\S+?):(\d+): (.+)$")
SAMPLE_DATA = Path(rlhf.__file__).parent / "sample_data"


def rlhf_validate(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf", "validate", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def write(path: Path, lines) -> str:
    path.write_bytes(b"".join((json.dumps(x).encode() if isinstance(x, dict) else x) + b"\n"
                              for x in lines))
    return str(path)


def google(i, **kw):
    return {"input_text": f"post {i}", "candidate_0": f"a{i}", "candidate_1": f"b{i}", "choice": i % 2, **kw}


def problem_lines(stderr: str) -> list[tuple[str, int, str]]:
    out = []
    for line in stderr.splitlines():
        m = PROBLEM.match(line)
        if m and "warning:" not in m.group(3):
            out.append((m.group(1), int(m.group(2)), m.group(3)))
    return out


def test_valid_data_exits_0_and_prints_statistics(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(i) for i in range(4)])
    prompts = write(tmp_path / "prompts.jsonl", [{"input_text": "another post"}])
    evals = write(tmp_path / "eval.jsonl", [{"input_text": "held out", "reference": "r"}])
    r = rlhf_validate("--preference-dataset", pref, "--prompt-dataset", prompts, "--eval-dataset", evals)
    assert r.returncode == 0, r.stderr
    assert "| preference | google_text | 1 | 4 | 4 | 0 | 2/2 |" in r.stdout
    assert "| prompt | text | 1 | 1 | 1 | 0 | - |" in r.stdout
    assert "| eval | text | 1 | 1 | 1 | 0 | - |" in r.stdout
    assert "| preference | prompt | chars | 6 | 6 | 6 | 6 | - |" in r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    assert problem_lines(r.stderr) == []


@pytest.mark.parametrize("kind", ["prompt", "eval"])
def test_a_prompt_or_eval_file_is_validated_on_its_own(tmp_path, kind):
    good = write(tmp_path / f"{kind}.jsonl", [{"input_text": "a post"}, {"input_text": "another"}])
    r = rlhf_validate(f"--{kind}-dataset", good)
    assert r.returncode == 0, r.stderr
    assert f"| {kind} | " in r.stdout and "| preference |" not in r.stdout
    bad = write(tmp_path / f"bad-{kind}.jsonl", [{"input_text": "fine"}, {"input_txt": "typo"}])
    r = rlhf_validate(f"--{kind}-dataset", bad)
    assert r.returncode == 2 and f"{bad}:2:" in r.stderr and "Traceback" not in r.stderr


def test_no_dataset_at_all_exits_2_naming_the_three_flags():
    r = rlhf_validate()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--preference-dataset, --prompt-dataset, --eval-dataset" in r.stderr


def test_invalid_data_exits_2_with_file_and_line_for_each_problem(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [
        google(0),
        b"{not json",
        google(2, choice="1"),
        google(3, candidate_1="a3"),
        b'"a string"',
        google(5, input_text="   "),
        b'{"input_text": "caf\xe9", "candidate_0": "a", "candidate_1": "b", "choice": 0}',
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode(),
    ])
    ranked = write(tmp_path / "ranked.jsonl", [
        {"input_text": "q", "candidates": ["a", "b", "c"], "ranking": [0, 0, 1]}])
    r = rlhf_validate("--preference-dataset", pref, "--eval-dataset", ranked)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    got = problem_lines(r.stderr)
    assert [(f, n) for f, n, _ in got] == [(pref, n) for n in range(2, 9)] + [(ranked, 1)]
    messages = dict(((f, n), m) for f, n, m in got)
    assert messages[(pref, 2)].startswith("invalid JSON")
    assert "without quotes" in messages[(pref, 3)]
    assert "identical" in messages[(pref, 4)]
    assert "not a JSON object" in messages[(pref, 5)]
    assert "only whitespace" in messages[(pref, 6)]
    assert "not valid UTF-8" in messages[(pref, 7)]
    assert "format changes here to TRL" in messages[(pref, 8)] and "line 1 is Google text" in messages[(pref, 8)]
    assert "eval data does not take" in messages[(ranked, 1)]
    assert r.stderr.rstrip().endswith("8 problem(s): the datasets are not valid")
    assert r.stdout == ""


def test_ranking_that_is_not_a_permutation(tmp_path):
    ranked = write(tmp_path / "ranked.jsonl", [
        {"input_text": "q", "candidates": ["a", "b", "c"], "ranking": [2, 0, 1]},
        {"input_text": "q", "candidates": ["a", "b", "c"], "ranking": [0, 0, 1]}])
    r = rlhf_validate("--preference-dataset", ranked)
    assert r.returncode == 2
    [(f, n, msg)] = problem_lines(r.stderr)
    assert (f, n) == (ranked, 2) and "not a permutation" in msg


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b'[{"input_text": "a"},\n {"input_text": "b"}]\n', "the file is a JSON array"),
])
def test_file_level_problems_exit_2(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    r = rlhf_validate("--preference-dataset", str(path))
    assert r.returncode == 2
    [(f, n, msg)] = problem_lines(r.stderr)
    assert (f, n) == (str(path), 1) and msg.startswith(message)
    assert "Traceback" not in r.stderr


def test_missing_file_and_empty_glob_exit_2_with_a_clear_message(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    r = rlhf_validate("--preference-dataset", missing)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert any(line.startswith(f"{missing}: ") for line in r.stderr.splitlines()), r.stderr
    pattern = str(tmp_path / "*.jsonl")
    r = rlhf_validate("--preference-dataset", pattern)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert any(line.startswith(f"{pattern}: ") for line in r.stderr.splitlines()), r.stderr


def test_missing_bucket_and_object_exit_2(gcs_prefix):
    for uri in ("gs://no-such-bucket-rlhf-cli/data.jsonl", f"{gcs_prefix}/absent.jsonl"):
        r = rlhf_validate("--preference-dataset", uri)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert any(line.startswith(f"{uri}: ") for line in r.stderr.splitlines()), r.stderr


def test_gcs_dataset_and_output_dir(gcs_prefix):
    uri = f"{gcs_prefix}/pref.jsonl"
    storage.write_text(uri, "".join(json.dumps(google(i)) + "\n" for i in range(3)))
    r = rlhf_validate("--preference-dataset", uri, "--output-dir", f"{gcs_prefix}/out")
    assert r.returncode == 0, r.stderr
    assert storage.read_json(f"{gcs_prefix}/out/stats.json")["datasets"]["preference"]["pairs"] == 3


def test_max_errors_shows_the_first_then_a_count(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [b"nonsense"] * 25)
    r = rlhf_validate("--preference-dataset", pref, "--max-errors", "3")
    assert r.returncode == 2
    assert [n for _, n, _ in problem_lines(r.stderr)] == [1, 2, 3]
    assert "... and 22 more problems" in r.stderr.splitlines()


def test_default_shows_20_problems(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [b"nonsense"] * 25)
    r = rlhf_validate("--preference-dataset", pref)
    assert len(problem_lines(r.stderr)) == 20
    assert "... and 5 more problems" in r.stderr.splitlines()


def test_output_dir_is_written_only_when_valid(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(0), google(1)])
    out = tmp_path / "out"
    r = rlhf_validate("--preference-dataset", pref, "--output-dir", str(out), "--instruction", "Summarize:")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "preference.jsonl", "prompts.jsonl",
                                                    "stats.json", "summary.html", "summary.md"]
    row = json.loads((out / "preference.jsonl").read_text().splitlines()[0])
    assert row["instruction"] == "Summarize:" and row["messages"][0]["content"] == "post 0"
    bad_out = tmp_path / "bad_out"
    write(tmp_path / "pref.jsonl", [google(0), b"{"])
    r = rlhf_validate("--preference-dataset", pref, "--output-dir", str(bad_out))
    assert r.returncode == 2
    assert not bad_out.exists() or list(bad_out.iterdir()) == []


def test_warnings_do_not_fail(tmp_path):
    pref = write(tmp_path / "pref.jsonl", [google(0), google(0)])
    r = rlhf_validate("--preference-dataset", pref)
    assert r.returncode == 0
    assert f"{pref}:2: warning: exact duplicate of line 1; a repeated row counts twice in training" \
        in r.stderr.splitlines()


def test_token_statistics_with_a_tokenizer_directory(tmp_path, word_tokenizer):
    tok = word_tokenizer
    pref = write(tmp_path / "pref.jsonl", [{"input_text": "one two three", "candidate_0": "a b",
                                            "candidate_1": "c", "choice": 0}])
    r = rlhf_validate("--preference-dataset", pref, "--tokenizer", tok, "--prompt-sequence-length", "2",
                      "--target-sequence-length", "1")
    assert r.returncode == 0, r.stderr
    assert "| preference | prompt | tokens | 3 | 3 | 3 | 3 | 1 |" in r.stdout
    assert "| preference | response | tokens | 1 | 2 | 2 | 2 | 1 |" in r.stdout


def test_help_lists_the_flags():
    r = subprocess.run([sys.executable, "-m", "rlhf", "validate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ("--preference-dataset", "--prompt-dataset", "--eval-dataset", "--output-dir",
                 "--instruction", "--tokenizer", "--prompt-sequence-length", "--target-sequence-length",
                 "--max-errors"):
        assert flag in r.stdout


def test_bundled_sample_data_is_valid(tmp_path):
    args = ["--preference-dataset", str(SAMPLE_DATA / "preference.jsonl"),
            "--prompt-dataset", str(SAMPLE_DATA / "prompts.jsonl"),
            "--eval-dataset", str(SAMPLE_DATA / "eval.jsonl"), "--output-dir", str(tmp_path / "out")]
    r = rlhf_validate(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["datasets"]["preference"]["format"] == "google_text"
    assert stats["datasets"]["preference"]["pairs"] > 0
    assert "eval_prompts_in_training" in stats and stats["eval_prompts_in_training"] == 0


def test_a_storage_outage_is_not_a_data_mistake(tmp_path):
    """Cloud Storage not answering at all (a closed port stands for the outage): after the retries,
    its own message and exit code (75, try again later), never "the datasets are not valid"; bad
    data on a storage that answers still exits 2 (the tests above)."""
    import os
    import socket

    from rlhf.errors import OUTAGE_EXIT
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}", RLHF_STORAGE_RETRY_DEADLINE="2")
    done = subprocess.run([sys.executable, "-m", "rlhf", "validate", "--preference-dataset",
                           "gs://rlhf-test-bucket/data/prefs.jsonl"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == OUTAGE_EXIT == 75, done.stderr[-2000:]
    assert "error: Cloud Storage unavailable after 2 s of retries" in done.stderr
    assert "not valid" not in done.stderr and "Traceback" not in done.stderr
