"""The bundled sample data (`rlhf/sample_data/`): formats, disjoint splits, sizes, balance, and labels
that agree with the current judge (editing the judge without re-labelling fails here)."""

import importlib.util
import json
from pathlib import Path

import pytest

from rlhf import judge as J
from rlhf.samples import INSTRUCTION, SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[1]


def _build_module():
    spec = importlib.util.spec_from_file_location("build_sample_data", ROOT / "scripts" / "build_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


B = _build_module()


def read_jsonl(name):
    rows = []
    with open(SAMPLE_DIR / name, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            assert line.strip(), f"{name}:{line_no}: blank line"
            row = json.loads(line)
            assert isinstance(row, dict), f"{name}:{line_no}: not an object"
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def data():
    return {name: read_jsonl(f"{name}.jsonl") for name in ("preference", "prompts", "eval")}


@pytest.fixture(scope="module")
def posts():
    return B.read_posts()


@pytest.fixture(scope="module")
def manifest():
    return json.loads((SAMPLE_DIR / "source" / "manifest.json").read_text(encoding="utf-8"))


def test_posts_are_many_distinct_and_the_right_length(posts):
    assert 280 <= len(posts) <= 320
    texts = [p["text"] for p in posts.values()]
    assert len(set(texts)) == len(texts)
    for p in posts.values():
        n = len(p["text"].split())
        assert 40 <= n <= 120, f"post {p['id']} has {n} words"
    assert len({p["topic"] for p in posts.values()}) >= 15  # varied topics, not one template


def test_rows_have_exactly_the_documented_fields(data):
    pair_keys = {"input_text", "candidate_0", "candidate_1", "choice"}
    for row in data["preference"]:
        assert set(row) == pair_keys
    for row in data["eval"]:
        assert set(row) == pair_keys | {"reference"}
    for row in data["prompts"]:
        assert set(row) == {"input_text"}
    for row in data["preference"] + data["eval"]:
        assert type(row["choice"]) is int and row["choice"] in (0, 1)
        for k in ("input_text", "candidate_0", "candidate_1"):
            assert isinstance(row[k], str) and row[k].strip()
        assert row["candidate_0"].strip() != row["candidate_1"].strip()
    for row in data["eval"]:
        assert isinstance(row["reference"], str) and row["reference"].strip()


def test_row_counts(data):
    # 160 posts x 10 pairs (five ranked candidates each), less identical and tied pairs: the issue
    # asks for at least 1,000 comparisons without new posts.
    assert 1000 <= len(data["preference"]) <= 1600
    assert len({r["input_text"] for r in data["preference"]}) >= 155
    assert len(data["prompts"]) == 100
    assert 35 <= len(data["eval"]) <= 40


def test_splits_are_disjoint_by_post_and_inputs_are_the_posts(data, posts):
    texts = {p["text"] for p in posts.values()}
    sets = {name: [r["input_text"] for r in rows] for name, rows in data.items()}
    for name, inputs in sets.items():
        if name != "preference":  # ranked: ten pairs per preference post
            assert len(set(inputs)) == len(inputs), f"{name} repeats a post"
        assert set(inputs) <= texts, f"{name} has an input that is not a source post"
        # The instruction is a pipeline parameter, not part of the input.
        assert not any(INSTRUCTION in t for t in inputs)
    assert not set(sets["preference"]) & set(sets["eval"])
    assert not set(sets["preference"]) & set(sets["prompts"])
    assert not set(sets["eval"]) & set(sets["prompts"])


def test_choices_agree_with_the_current_judge(data, manifest):
    assert manifest["judge_version"] == J.JUDGE_VERSION, (
        "the data was labelled by another judge version: run scripts/build_sample_data.py --relabel")
    assert manifest["instruction"] == INSTRUCTION
    for name in ("preference", "eval"):
        for i, row in enumerate(data[name], 1):
            post, a, b = row["input_text"], row["candidate_0"], row["candidate_1"]
            sa, sb = J.judge(post, a, INSTRUCTION).score, J.judge(post, b, INSTRUCTION).score
            assert sa != sb, f"{name}.jsonl:{i}: a tie should have been dropped"
            assert row["choice"] == J.prefer(post, a, b, INSTRUCTION) == (0 if sa > sb else 1), (
                f"{name}.jsonl:{i}: choice disagrees with the judge: run build_sample_data.py --relabel")


def test_choice_balance_is_not_degenerate(data):
    for name, low, high in (("preference", 0.35, 0.65), ("eval", 0.25, 0.75)):
        share = sum(r["choice"] for r in data[name]) / len(data[name])
        assert low <= share <= high, f"{name}: {share:.0%} of choices are 1"


def test_candidates_are_the_stored_generations(data, posts, manifest):
    stored = {}
    for line in (SAMPLE_DIR / "source" / "candidates.jsonl").read_text(encoding="utf-8").splitlines():
        c = json.loads(line)
        stored.setdefault(c["id"], set()).add(c["text"])
    by_text = {p["text"]: pid for pid, p in posts.items()}
    for row in data["preference"] + data["eval"]:
        pid = by_text[row["input_text"]]
        assert {row["candidate_0"], row["candidate_1"]} <= stored[pid]
    for row in data["eval"]:  # eval posts keep their one pair of the first two samplers
        assert {row["candidate_0"], row["candidate_1"]} == stored[by_text[row["input_text"]]]
    assert [s["name"] for s in manifest["samplers"]] == ["t0.7", "t1.0", "t0.5", "t0.8", "t1.2"]
    per_post = {}
    for row in data["preference"]:
        per_post.setdefault(row["input_text"], set()).update((row["candidate_0"], row["candidate_1"]))
    assert sum(len(c) >= 4 for c in per_post.values()) >= 150  # ranked, not one pair per post


def test_split_is_reproducible_from_the_seed(data, posts, manifest):
    splits = B.split(list(posts), manifest["seed"])
    assert splits == manifest["splits"]
    assert [r["input_text"] for r in data["prompts"]] == [posts[i]["text"] for i in splits["prompts"]]
    assert {r["input_text"] for r in data["eval"]} <= {posts[i]["text"] for i in splits["eval"]}


def test_references_are_good_summaries_by_the_judge(data):
    """The judge and the hand-written references agree: each reference is within the limit and
    scores well; together they score higher than the model's candidates."""
    limit = J.max_words(INSTRUCTION)
    ref_scores, cand_scores = [], []
    for row in data["eval"]:
        r = J.judge(row["input_text"], row["reference"], INSTRUCTION)
        assert r.words <= limit
        assert r.score >= 0.7, (row["reference"], r.notes)
        ref_scores.append(r.score)
        cand_scores += [J.judge(row["input_text"], row[k], INSTRUCTION).score for k in ("candidate_0", "candidate_1")]
    assert sum(ref_scores) / len(ref_scores) >= 0.85
    assert sum(ref_scores) / len(ref_scores) > sum(cand_scores) / len(cand_scores) + 0.1


def test_labels_carry_signal(data):
    """Chosen candidates score clearly higher than rejected ones: the pairs are not coin flips."""
    margins = []
    for row in data["preference"]:
        s = [J.judge(row["input_text"], row[k], INSTRUCTION).score for k in ("candidate_0", "candidate_1")]
        margins.append(s[row["choice"]] - s[1 - row["choice"]])
    assert min(margins) > 0
    assert sum(margins) / len(margins) > 0.1


def test_readme_stats_block_matches_the_manifest(manifest):
    readme = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- stats:begin -->")[1].split("<!-- stats:end -->")[0]
    stats = manifest["stats"]
    assert f"preference {stats['rows']['preference']}, prompts {stats['rows']['prompts']}" in block
    assert f"judge version {manifest['judge_version']}" in block
    assert INSTRUCTION in readme
