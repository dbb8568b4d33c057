"""Each user format converted to canonical rows, and each row-level mistake reported with what was
expected (rlhf.data.formats)."""

from __future__ import annotations

import pytest

from rlhf.data.canonical import EvalExample, PreferencePair, Prompt, prompt_messages, prompt_text
from rlhf.data.formats import describe_format, parse_row


def ok(kind, obj, **kw):
    parsed = parse_row(kind, obj, **kw)
    assert parsed.errors == [], parsed.errors
    return parsed


def errors(kind, obj, **kw):
    parsed = parse_row(kind, obj, **kw)
    assert parsed.errors, "expected a problem"
    assert parsed.rows == []
    return parsed.errors


def user(text):
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------
# preference formats


@pytest.mark.parametrize("choice,chosen,rejected", [(0, "A", "B"), (1, "B", "A")])
def test_google_text_choice_picks_the_preferred_candidate(choice, chosen, rejected):
    p = ok("preference", {"input_text": "post", "candidate_0": "A", "candidate_1": "B", "choice": choice},
           source="f.jsonl:3")
    assert p.format == "google_text"
    assert p.rows == [PreferencePair(messages=user("post"), chosen=chosen, rejected=rejected,
                                     source="f.jsonl:3", instruction=None)]
    assert p.choice == choice
    assert p.responses == [chosen, rejected]


def test_google_chat_keeps_the_conversation():
    turns = [{"author": "user", "content": "hi"}, {"author": "assistant", "content": "hello"},
             {"author": "user", "content": "summarize this"}]
    p = ok("preference", {"messages": turns, "candidate_0": "A", "candidate_1": "B", "choice": 1})
    assert p.format == "google_chat"
    assert p.rows[0].messages == [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "summarize this"}]
    assert (p.rows[0].chosen, p.rows[0].rejected) == ("B", "A")


def test_chat_accepts_role_for_author():
    p = ok("prompt", {"messages": [{"role": "user", "content": "hi"}]})
    assert p.rows[0].messages == user("hi")


def test_trl_format():
    p = ok("preference", {"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert p.format == "trl"
    assert p.rows == [PreferencePair(messages=user("q"), chosen="good", rejected="bad")]
    assert p.choice is None


def test_ranked_feedback_becomes_every_pair_best_first():
    # ranking lists candidate indices from best to worst: c is best, b worst
    p = ok("preference", {"input_text": "q", "candidates": ["a", "b", "c"], "ranking": [2, 0, 1]})
    assert p.format == "ranked"
    assert [(r.chosen, r.rejected) for r in p.rows] == [("c", "a"), ("c", "b"), ("a", "b")]
    assert p.responses == ["a", "b", "c"]


def test_ranked_feedback_with_n_candidates_gives_n_choose_2_pairs():
    cands = [f"answer {i}" for i in range(5)]
    ranking = [3, 1, 4, 0, 2]
    p = ok("preference", {"input_text": "q", "candidates": cands, "ranking": ranking})
    assert len(p.rows) == 10
    position = {c: ranking.index(i) for i, c in enumerate(cands)}
    assert all(position[r.chosen] < position[r.rejected] for r in p.rows)
    assert len({(r.chosen, r.rejected) for r in p.rows}) == 10


def test_ranked_chat_format():
    p = ok("preference", {"messages": [{"author": "user", "content": "q"}], "candidates": ["a", "b"],
                          "ranking": [1, 0]})
    assert p.format == "ranked_chat"
    assert (p.rows[0].chosen, p.rows[0].rejected) == ("b", "a")


def test_other_prompt_and_answer_combinations_are_accepted_under_their_own_name():
    p = ok("preference", {"prompt": "q", "candidate_0": "a", "candidate_1": "b", "choice": 0})
    assert p.format == "prompt+choice"
    assert (p.rows[0].chosen, p.rows[0].rejected) == ("a", "b")
    assert describe_format("prompt+choice") == "prompt+choice (prompt, candidate_0, candidate_1, choice)"


# ---------------------------------------------------------------------------------------------
# prompt and eval formats


@pytest.mark.parametrize("obj,fmt", [
    ({"input_text": "q"}, "text"),
    ({"prompt": "q"}, "prompt"),
    ({"messages": [{"author": "user", "content": "q"}]}, "chat"),
])
def test_prompt_formats(obj, fmt):
    p = ok("prompt", obj, source="p.jsonl:1")
    assert p.format == fmt
    assert p.rows == [Prompt(messages=user("q"), source="p.jsonl:1")]


def test_a_preference_file_serves_as_prompt_dataset_without_unknown_fields():
    p = ok("prompt", {"input_text": "q", "candidate_0": "a", "candidate_1": "b", "choice": 0})
    assert p.rows == [Prompt(messages=user("q"))]
    assert p.unknown_keys == []


def test_eval_prompt_only():
    p = ok("eval", {"input_text": "q"})
    assert p.format == "text"
    assert p.rows == [EvalExample(messages=user("q"))]


def test_eval_with_google_pair_and_reference():
    p = ok("eval", {"input_text": "q", "candidate_0": "a", "candidate_1": "b", "choice": 1,
                    "reference": "ref"})
    assert p.format == "google_text"
    assert p.rows == [EvalExample(messages=user("q"), chosen="b", rejected="a", reference="ref")]


def test_eval_with_trl_pair():
    p = ok("eval", {"prompt": "q", "chosen": "a", "rejected": "b"})
    assert (p.rows[0].chosen, p.rows[0].rejected, p.rows[0].reference) == ("a", "b", None)


def test_eval_rejects_ranked_feedback():
    [msg] = errors("eval", {"input_text": "q", "candidates": ["a", "b"], "ranking": [0, 1]})
    assert "eval data does not take" in msg and "candidate_0" in msg


def test_eval_reference_must_be_text():
    [msg] = errors("eval", {"input_text": "q", "reference": ""})
    assert msg == "`reference` is empty; expected a non-empty string (the reference answer)"


def test_null_optional_fields_mean_absent():
    p = ok("eval", {"input_text": "q", "reference": None, "instruction": None})
    assert p.rows[0].reference is None and p.rows[0].instruction is None


# ---------------------------------------------------------------------------------------------
# instruction


def test_run_instruction_is_kept_and_prepended():
    p = ok("preference", {"input_text": "post", "candidate_0": "a", "candidate_1": "b", "choice": 0},
           instruction="Summarize:")
    row = p.rows[0]
    assert row.instruction == "Summarize:"
    assert row.messages == user("post")  # kept apart ...
    assert prompt_messages(row) == user("Summarize:\n\npost")  # ... and prepended by the reader
    assert prompt_text(row) == "Summarize:\n\npost"


def test_row_instruction_overrides_the_run_instruction():
    p = ok("prompt", {"input_text": "post", "instruction": "Translate:"}, instruction="Summarize:")
    assert p.rows[0].instruction == "Translate:"
    p = ok("prompt", {"input_text": "post", "instruction": ""}, instruction="Summarize:")
    assert p.rows[0].instruction == "Summarize:"


def test_instruction_must_be_a_string():
    [msg] = errors("prompt", {"input_text": "post", "instruction": 3})
    assert msg.startswith("`instruction` is a number (3); expected a string")


# ---------------------------------------------------------------------------------------------
# field problems


GOOD = {"input_text": "post", "candidate_0": "a", "candidate_1": "b", "choice": 0}


@pytest.mark.parametrize("key", ["input_text", "candidate_0", "candidate_1"])
@pytest.mark.parametrize("value,expected_start", [
    (None, "`{k}` is null; expected a non-empty string"),
    ("", "`{k}` is empty; expected a non-empty string"),
    ("  \n\t", "`{k}` contains only whitespace; expected a non-empty string"),
    (42, "`{k}` is a number (42); expected a non-empty string"),
    (["x"], "`{k}` is a list of 1 item; expected a non-empty string"),
    ({"text": "x"}, "`{k}` is an object; expected a non-empty string"),
])
def test_text_field_problems(key, value, expected_start):
    [msg] = errors("preference", {**GOOD, key: value})
    assert msg.startswith(expected_start.format(k=key)), msg


@pytest.mark.parametrize("key", ["candidate_0", "candidate_1", "choice"])
def test_missing_field(key):
    obj = {k: v for k, v in GOOD.items() if k != key}
    [msg] = errors("preference", obj)
    assert msg.startswith(f"missing field `{key}`; expected ")


@pytest.mark.parametrize("key", ["prompt", "chosen", "rejected"])
def test_trl_field_problems(key):
    obj = {"prompt": "q", "chosen": "a", "rejected": "b", key: "   "}
    [msg] = errors("preference", obj)
    assert msg.startswith(f"`{key}` contains only whitespace; expected a non-empty string")


@pytest.mark.parametrize("value,hint", [
    ("1", 'the string "1"; expected the integer 0 (candidate_0 is preferred) or 1 (candidate_1 is '
          'preferred), without quotes: write "choice": 1'),
    (True, "true; expected the integer 0 (candidate_0 is preferred) or 1 (candidate_1 is preferred), "
           "not a boolean: write 1"),
    (False, "false; expected the integer 0 (candidate_0 is preferred) or 1 (candidate_1 is preferred), "
            "not a boolean: write 0"),
    (1.0, "a number (1.0); expected the integer 0 (candidate_0 is preferred) or 1 (candidate_1 is "
          "preferred): write 1"),
    (2, "a number (2); expected the integer 0 (candidate_0 is preferred) or 1 (candidate_1 is preferred)"),
    (None, "null; expected the integer 0"),
    ("A", 'the string "A"; expected the integer 0'),
])
def test_choice_must_be_integer_0_or_1(value, hint):
    [msg] = errors("preference", {**GOOD, "choice": value})
    assert msg.startswith(f"`choice` is {hint}"), msg


@pytest.mark.parametrize("obj,message", [
    ({**GOOD, "candidate_1": "a"}, "`candidate_0` and `candidate_1` are identical"),
    ({**GOOD, "candidate_1": " a\n"}, "`candidate_0` and `candidate_1` are identical"),
    ({"prompt": "q", "chosen": "x", "rejected": "x"}, "`chosen` and `rejected` are identical"),
    ({"input_text": "q", "candidates": ["a", "b", "a"], "ranking": [0, 1, 2]},
     "`candidates[0]` and `candidates[2]` are identical"),
])
def test_identical_candidates(obj, message):
    [msg] = errors("preference", obj)
    assert msg.startswith(message), msg


@pytest.mark.parametrize("candidates,ranking,message", [
    (["a", "b", "c"], [0, 0, 1], "`ranking` [0, 0, 1] is not a permutation of the candidate indices "
                                 "(0 repeated; 2 missing); expected a list of candidate indices from "
                                 "best to worst, each index 0..2 exactly once"),
    (["a", "b", "c"], [0, 1, 3], "`ranking` [0, 1, 3] is not a permutation of the candidate indices "
                                 "(3 not a candidate index; 2 missing)"),
    (["a", "b", "c"], [1, 0], "`ranking` [1, 0] has 2 entries but there are 3 candidates"),
    (["a", "b"], [0, 1, 2], "`ranking` [0, 1, 2] has 3 entries but there are 2 candidates"),
    (["a", "b"], [True, False], "`ranking` contains true; expected a list of candidate indices"),
    (["a", "b"], ["0", "1"], '`ranking` contains the string "0"; expected'),
    (["a", "b"], "0,1", '`ranking` is the string "0,1"; expected'),
    (["a"], [0], "`candidates` is a list of 1 item; expected a list of at least two response strings"),
    ("a b", [0], '`candidates` is the string "a b"; expected a list'),
    (["a", ""], [0, 1], "`candidates[1]` is empty; expected a non-empty string"),
])
def test_ranking_problems(candidates, ranking, message):
    msgs = errors("preference", {"input_text": "q", "candidates": candidates, "ranking": ranking})
    assert any(m.startswith(message) for m in msgs), msgs


def test_missing_ranking():
    [msg] = errors("preference", {"input_text": "q", "candidates": ["a", "b"]})
    assert msg.startswith("missing field `ranking`; expected a list of candidate indices from best to worst")


@pytest.mark.parametrize("turns,message", [
    ("hi", "`messages` is the string \"hi\"; expected a list of"),
    ([], "`messages` is an empty list; expected at least one user turn"),
    (["hi"], "`messages[0]` is the string \"hi\"; expected an object"),
    ([{"author": "bot", "content": "x"}], "`messages[0].author` is the string \"bot\"; expected \"user\" or \"assistant\""),
    ([{"content": "x"}], "`messages[0].author` is missing; expected \"user\" or \"assistant\""),
    ([{"author": "user", "content": ""}], "`messages[0].content` is empty; expected a non-empty string"),
    ([{"author": "user"}], "missing field `messages[0].content`; expected a non-empty string"),
    ([{"author": "assistant", "content": "x"}, {"author": "user", "content": "y"}],
     "`messages[0]` is an assistant turn; expected the conversation to start with a user turn"),
    ([{"author": "user", "content": "x"}, {"author": "assistant", "content": "y"}],
     "the last turn `messages[1]` is an assistant turn; expected the conversation to end with the user turn"),
])
def test_chat_problems(turns, message):
    msgs = errors("preference", {"messages": turns, "candidate_0": "a", "candidate_1": "b", "choice": 0})
    assert any(m.startswith(message) for m in msgs), msgs


@pytest.mark.parametrize("value,message", [
    ([1, 2], "the line is a list of 2 items, not a JSON object; expected one object per line like "),
    ("text", 'the line is the string "text", not a JSON object'),
    (3, "the line is a number (3), not a JSON object"),
    (None, "the line is null, not a JSON object"),
])
def test_line_that_is_not_an_object(value, message):
    [msg] = errors("preference", value)
    assert msg.startswith(message)


def test_row_without_a_prompt():
    [msg] = errors("prompt", {"text": "q"})
    assert msg == ("missing the prompt; expected a field `input_text` (Google text), `messages` "
                   "(Google chat) or `prompt` (TRL)")


def test_row_with_two_prompts():
    [msg] = errors("prompt", {"input_text": "q", "prompt": "q"})
    assert msg == "has both `input_text` and `prompt`; expected exactly one prompt field"


def test_preference_row_without_answers():
    [msg] = errors("preference", {"input_text": "q"})
    assert msg.startswith("has no preference fields; expected `candidate_0`, `candidate_1` and `choice`")


def test_preference_row_mixing_two_answer_formats():
    [msg] = errors("preference", {"input_text": "q", "candidate_0": "a", "candidate_1": "b", "choice": 0,
                                  "chosen": "a", "rejected": "b"})
    assert msg.startswith("mixes the fields of two formats (candidate_0/candidate_1/choice and "
                          "chosen/rejected)")


def test_every_problem_of_a_row_is_reported():
    msgs = errors("preference", {"input_text": "", "candidate_0": None, "candidate_1": "b", "choice": "0"})
    assert len(msgs) == 3
    assert [m.split(" ")[0] for m in msgs] == ["`input_text`", "`candidate_0`", "`choice`"]


def test_format_is_known_even_when_fields_are_wrong():
    p = parse_row("preference", {"prompt": "q", "chosen": "", "rejected": "b"})
    assert p.format == "trl" and p.errors


def test_unknown_keys_are_listed():
    p = ok("preference", {**GOOD, "id": 7, "annotator": "x"})
    assert p.unknown_keys == ["id", "annotator"]


def test_duplicate_key_ignores_key_order():
    a = ok("preference", {"input_text": "q", "candidate_0": "a", "candidate_1": "b", "choice": 0})
    b = ok("preference", {"choice": 0, "candidate_1": "b", "candidate_0": "a", "input_text": "q"})
    c = ok("preference", {"choice": 1, "candidate_1": "b", "candidate_0": "a", "input_text": "q"})
    assert a.key == b.key != c.key
