"""Extractiveness (rlhf.evaluate.extractive) against hand-computed examples, and the copying alarm."""

import math

import pytest

from rlhf.evaluate import extractive as X
from rlhf.evaluate.metrics import copying_alarm

POST = "I bought a red bike in May. The red bike broke in June and I want a refund."


def test_tokens_lowercase_and_drop_punctuation():
    assert X.tokens("I don't KNOW, 1,500 euros!") == ["i", "don't", "know", "1", "500", "euros"]


def test_fragments_are_the_greedy_longest_shared_runs():
    post = X.tokens("a b c d x a b c")
    # "a b c d" (4, the longest match of "a"), then "z" in no fragment, then "b c" (2).
    assert X.fragments(post, X.tokens("a b c d z b c")) == [4, 2]
    # Greedy: at "x" the run "x a b c" (4) is taken, so "a b c" is not counted again.
    assert X.fragments(post, X.tokens("x a b c")) == [4]
    assert X.fragments(post, X.tokens("q r")) == [] and X.fragments([], X.tokens("a")) == []


def test_coverage_and_density_by_hand():
    # Summary: "the red bike broke in june" (6 words, one fragment of 6) + "so" + "i want a refund" (4).
    m = X.measure(POST, "The red bike broke in June, so I want a refund.")
    assert m.coverage == pytest.approx(10 / 11)
    assert m.density == pytest.approx((36 + 16) / 11)
    assert m.longest_fragment == 6
    # A paraphrase of 13 words: only "the" (1) and "a refund" (2) are shared.
    p = X.measure(POST, "The poster's new bicycle failed; they ask for their money back, a refund.")
    assert p.coverage == pytest.approx(3 / 13) and p.density == pytest.approx((1 + 4) / 13)


def test_novel_bigrams_and_copied_5grams_by_hand():
    # 11 words: 10 bigrams, 7 5-grams. Shared bigrams with the post: the red, red bike, bike broke,
    # broke in, in june, i want, want a, a refund (8) -> 2 novel. Copied 5-grams: the 2 inside
    # "the red bike broke in june" -> 2 of 7 (none cross "so", and "i want a refund" is only 4 words).
    m = X.measure(POST, "The red bike broke in June, so I want a refund.")
    assert m.novel_bigrams == pytest.approx(2 / 10)
    assert m.copied_5grams == pytest.approx(2 / 7)
    copy = X.measure(POST, POST)
    assert copy.copied_5grams == 1.0 and copy.novel_bigrams == 0.0 and copy.coverage == 1.0
    short = X.measure(POST, "Red bike.")
    assert short.copied_5grams is None and short.novel_bigrams == 0.0


@pytest.mark.parametrize("text, expected", [
    ("I bought a bike.", True), ("  \"My bike broke.", True), ("We want a refund.", True),
    ("Our bike broke.", True), ("I'm upset about the bike.", True),
    ("The poster's bike broke and I quote.", False), ("Iris bought a bike.", False), ("", False),
])
def test_first_person_opening(text, expected):
    assert X.opens_in_first_person(text) is expected


def test_group_metrics_average_and_skip_undefined_shares():
    posts = [POST, POST]
    stats = X.group_metrics(posts, [POST, "Red bike."], finished=[True, False])
    assert stats["copied_5gram_share"] == 1.0  # "Red bike." has no 5-gram: left out, not counted as 0
    assert stats["first_person_share"] == 0.5 and stats["cut_share"] == 0.5
    assert stats["novel_bigram_share"] == 0.0
    assert "cut_share" not in X.group_metrics(posts, [POST, POST])
    assert set(X.group_metrics(posts, [POST, POST], [True, True])) == {s[0] for s in X.STATS}
    with pytest.raises(ValueError, match="paired"):
        X.group_metrics(posts, [POST])


def test_copying_alarm_needs_markedly_more_than_base_and_references():
    nan = float("nan")
    message = copying_alarm(0.09, 0.68, 0.05, 0.33)
    assert message and "68%" in message and "9% for the base" in message and "5% for the reference" in message
    assert "33% for the SFT" in message
    assert copying_alarm(0.09, 0.68) and copying_alarm(0.09, 0.68, nan)  # no references: base alone
    assert copying_alarm(0.09, 0.15) is None  # only 6 points more
    assert copying_alarm(0.30, 0.45) is None  # not twice the base
    assert copying_alarm(0.09, 0.30, 0.25) is None  # the references copy about as much
    assert copying_alarm(nan, 0.9) is None and copying_alarm(0.1, nan) is None
    assert not math.isnan(0.0) and copying_alarm(0.0, 0.1) is not None  # from nothing to 10 points
