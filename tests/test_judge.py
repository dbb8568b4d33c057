"""The constitution judge (`rlhf.judge`): each rule on hand-made summaries, the overall ordering,
determinism and `prefer`."""

import pytest

from rlhf import judge as J
from rlhf.judge import judge, key_facts, max_words, prefer, stem

INSTRUCTION = "Summarize in less than 50 words."

POST = (
    "Our beagle Toby keeps stealing socks and hiding them under the sofa. Yesterday he swallowed "
    "half of one and we spent 300 dollars at the emergency vet at 2 am. He is three years old and "
    "otherwise very calm. We tried a laundry basket with a lid and a bitter spray on the socks. "
    "Nothing works. Any tips from other beagle owners?"
)
GOOD = (
    "Toby, a three year old beagle, keeps stealing socks and hiding them under the sofa. After he "
    "swallowed half of one, the emergency vet cost 300 dollars. A basket with a lid and bitter spray "
    "did not work, so the owner asks other beagle owners for tips."
)

SHORT_POST = (
    "Tip for anyone who hates peeling garlic: put the cloves in a jar, close the lid and shake hard "
    "for 20 seconds. The skins come right off. My husband showed me this after 30 years of marriage."
)


def score(summary, post=POST, instruction=INSTRUCTION):
    return judge(post, summary, instruction)


def test_good_summary_scores_high_and_clean():
    r = score(GOOD)
    assert r.score > 0.85
    assert all(0.0 <= v <= 1.0 for v in r.rules.values())
    assert set(r.rules) == set(J.WEIGHTS)
    assert r.rules["length"] == r.rules["direct"] == r.rules["complete"] == r.rules["voice"] == 1.0
    assert r.max_words == 49 and r.words == len(GOOD.split())


@pytest.mark.parametrize("instruction, expected", [
    ("Summarize in less than 50 words.", 49),
    ("Summarize in fewer than 30 words", 29),
    ("Summarize the post in under 20 words.", 19),
    ("Write a summary of at most 40 words.", 40),
    ("No more than twenty words, please.", 20),
    ("Give a TL;DR in 25 words or less.", 25),
    ("Summarize in less than fifty words.", 49),
    ("Summarize this.", J.DEFAULT_MAX_WORDS),
    (None, J.DEFAULT_MAX_WORDS),
])
def test_word_limit_is_parsed_from_the_instruction(instruction, expected):
    assert max_words(instruction) == expected


def test_summary_over_the_limit_loses():
    padding = (" The owner also explains that Toby is calm, that the socks keep vanishing under the "
               "sofa every single day, and that the basket with a lid and the bitter spray on the "
               "socks did nothing at all for them.")
    long = GOOD + padding
    assert len(long.split()) > 49
    r_long, r_good = score(long), score(GOOD)
    assert r_long.rules["length"] < 1.0
    assert any("limit 49" in n for n in r_long.notes)
    assert r_long.score < r_good.score
    assert prefer(POST, long, GOOD, INSTRUCTION) == 1
    # The same summary is fine under a looser limit: the limit comes from the instruction.
    assert judge(POST, long, "Summarize in less than 100 words.").rules["length"] == 1.0


def test_length_penalty_grows_with_the_overrun():
    base = "Toby the beagle steals socks and cost 300 dollars at the vet."
    scores = [score(base + " He hides socks under the sofa." * k, instruction="Summarize in less than 15 words.")
              .rules["length"] for k in (0, 1, 2)]
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2]


def test_invented_name_loses():
    invented = GOOD.replace("the owner asks", "the owner, Margaret from Chicago, asks")
    r = score(invented)
    assert r.rules["faithful"] < score(GOOD).rules["faithful"]
    assert any("Margaret" in n and "Chicago" in n for n in r.notes)
    assert prefer(POST, invented, GOOD, INSTRUCTION) == 1


def test_invented_number_loses():
    wrong = GOOD.replace("300 dollars", "450 dollars")
    r = score(wrong)
    assert any("450" in n for n in r.notes)
    assert r.rules["faithful"] < score(GOOD).rules["faithful"]
    assert prefer(POST, GOOD, wrong, INSTRUCTION) == 0


def test_invented_content_words_lose():
    embellished = ("Toby, a three year old beagle, steals socks; the poor animal suffers from a deep "
                   "psychological obsession caused by childhood trauma and boredom.")
    r = score(embellished)
    assert r.rules["faithful"] < 0.6
    assert any("psychological" in n for n in r.notes)


def test_number_words_match_digits_and_back():
    r = score("Toby, a 3 year old beagle, steals socks; a vet visit at two am cost 300 dollars.")
    assert not any("invented names/numbers" in n for n in r.notes)


def test_repetition_loses():
    repeated = GOOD + " Toby keeps stealing socks and hiding them under the sofa."
    r = score(repeated)
    assert r.rules["repetition"] < 0.5
    assert any("repeated" in n for n in r.notes)
    assert prefer(POST, GOOD, repeated, INSTRUCTION) == 0


def test_a_word_hammered_three_times_costs():
    hammered = "Toby the beagle steals socks. The beagle hides socks. The beagle swallowed socks at 2 am."
    assert score(hammered).rules["repetition"] < 1.0


@pytest.mark.parametrize("preamble", [
    "Sure! Here is a summary of the post: ",
    "Here's a short summary in less than 50 words: ",
    "Certainly. ",
])
def test_preamble_loses_to_the_same_summary_without_it(preamble):
    chatty = preamble + GOOD
    r = score(chatty)
    assert r.rules["direct"] == 0.0
    assert r.score < score(GOOD).score
    assert prefer(POST, chatty, GOOD, INSTRUCTION) == 1


def test_sign_off_loses():
    r = score(GOOD + " I hope this helps!")
    assert r.rules["direct"] == 0.0


def test_meta_opening_costs_less_than_chatter():
    meta = score("The post describes Toby, a three year old beagle who steals socks and cost 300 dollars at the vet.")
    label = score("Summary: Toby, a three year old beagle, steals socks and cost 300 dollars at the vet.")
    chatter = score("Sure! Toby, a three year old beagle, steals socks and cost 300 dollars at the vet.")
    assert chatter.rules["direct"] < label.rules["direct"] < meta.rules["direct"] < 1.0


def test_answering_the_poster_instead_of_summarizing_loses():
    advice = ("You should keep your socks in a closed drawer, because your beagle Toby will keep "
              "stealing socks. I recommend a trainer.")
    r = score(advice)
    assert r.rules["voice"] == 0.0
    assert prefer(POST, advice, GOOD, INSTRUCTION) == 1
    for advice in ("I'd suggest a basket for Toby's socks.", "I would recommend a trainer for Toby."):
        assert score(advice).rules["voice"] < 1.0


def test_unfinished_sentence_loses():
    cut = GOOD.rsplit(" ", 6)[0]  # as if generation hit max_new_tokens
    r = score(cut)
    assert r.rules["complete"] == 0.0
    assert any("unfinished" in n for n in r.notes)
    assert score("Toby the beagle steals socks and the owner wants tips...").rules["complete"] == 0.5
    assert score('The owner asks: "Any tips?"').rules["complete"] == 1.0


def test_copying_the_whole_post_loses_even_within_the_limit():
    assert len(SHORT_POST.split()) < 49
    condensed = "To peel garlic, shake the cloves in a closed jar for 20 seconds and the skins come off."
    copy = score(SHORT_POST, post=SHORT_POST)
    assert copy.rules["length"] == 1.0
    assert copy.rules["concise"] < 0.2
    assert copy.score < score(condensed, post=SHORT_POST).score
    assert prefer(SHORT_POST, SHORT_POST, condensed, INSTRUCTION) == 1


def test_quoting_a_phrase_is_not_copying():
    assert score(GOOD).rules["concise"] == 1.0


def test_keyword_list_is_not_a_summary():
    keywords = "Toby beagle socks sofa 300 dollars vet 2 am laundry basket bitter spray tips."
    r = score(keywords)
    assert r.rules["sentences"] < 0.5
    assert r.score < 0.5 < score(GOOD).score


def test_markdown_list_costs():
    bullets = "- Toby, a three year old beagle, steals socks.\n- The vet cost 300 dollars.\n- Spray failed."
    r = score(bullets)
    assert r.rules["plain"] == 0.0
    assert r.score < score(GOOD).score


@pytest.mark.parametrize("empty", ["", "   ", "Toby.", "...", "\n\n"])
def test_empty_or_nearly_empty_scores_zero(empty):
    r = score(empty)
    assert r.score == 0.0
    assert r.notes and "empty" in r.notes[0]


def test_fluent_reply_that_says_nothing_scores_low():
    """Form alone earns nothing: content x form, so a short generic reply cannot game the judge."""
    vague = "This is a heartwarming story about a family and their life together."
    r = score(vague)
    assert r.rules["length"] == r.rules["complete"] == 1.0
    assert r.score < 0.3 < score(GOOD).score


def test_missing_key_facts_cost_coverage():
    thin = "A dog in the house keeps taking things, and the owner asks for tips."
    r = score(thin)
    assert r.rules["coverage"] < 0.5
    assert any("missing key facts" in n and "toby" in n for n in r.notes)


def test_key_facts_are_names_numbers_then_frequent_words():
    facts = key_facts(POST)
    assert facts[0] == "toby"
    assert "300" in facts and "3" in facts
    assert stem("socks") in facts and stem("beagle") in facts
    assert len(facts) <= J.KEY_FACTS
    # Day and month names are not key facts; "one" is too vague to be a number fact.
    facts = key_facts("On Tuesday in March I met Anna. One of us paid 40 dollars.")
    assert "tuesday" not in facts and "march" not in facts and "1" not in facts
    assert "anna" in facts and "40" in facts
    assert key_facts("") == []


@pytest.mark.parametrize("words", [("rent", "rents", "rented", "renting"), ("bake", "baked", "baking"),
                                   ("pay", "paid"), ("study", "studies", "studied"), ("stop", "stopped")])
def test_stemmer_conflates_word_forms(words):
    assert len({stem(w) for w in words}) == 1


def test_judge_is_deterministic():
    first = [score(s).to_dict() for s in (GOOD, SHORT_POST, "You should relax.")]
    second = [score(s).to_dict() for s in (GOOD, SHORT_POST, "You should relax.")]
    assert first == second


def test_prefer_agrees_with_scores_and_ignores_argument_order():
    candidates = [GOOD, "Sure! " + GOOD, GOOD.rsplit(" ", 6)[0], "You should buy a basket with a lid.",
                  "Toby beagle socks 300 vet.", GOOD + " I hope this helps!"]
    for a in candidates:
        for b in candidates:
            if a == b:
                assert prefer(POST, a, b, INSTRUCTION) == 0
                continue
            sa, sb = score(a).score, score(b).score
            p = prefer(POST, a, b, INSTRUCTION)
            assert p == 1 - prefer(POST, b, a, INSTRUCTION)
            if sa != sb:
                assert p == (0 if sa > sb else 1)


def test_prefer_breaks_ties_by_length_then_text():
    # Two summaries with identical scores: same rules, same facts; the shorter one wins.
    a = "Toby the beagle steals socks."
    b = "Toby the beagle steals the socks."
    assert score(a).score == score(b).score
    assert prefer(POST, a, b, INSTRUCTION) == 0 and prefer(POST, b, a, INSTRUCTION) == 1
    c, d = "Toby the beagle steals socks.", "Toby the beagle hides socks."
    if score(c).score == score(d).score:
        assert prefer(POST, c, d, INSTRUCTION) == (0 if c < d else 1)


def test_scores_stay_in_range_on_odd_inputs():
    odd = ["#" * 200, "🙂 " * 30, "1 2 3 4 5 6 7 8 9 10", "word " * 500, "Ünïcödé façade naïve café.",
           "**Summary:**\n\n1. Toby\n2. Socks", "you you you you you."]
    for s in odd:
        r = score(s)
        assert 0.0 <= r.score <= 1.0
        assert all(0.0 <= v <= 1.0 for v in r.rules.values())


def test_constitution_is_documented():
    assert J.__doc__ and "Constitutional AI" in J.__doc__ and "RLAIF" in J.__doc__
    for p in J.CONSTITUTION:
        assert p.name in J.__doc__ and p.text and p.weight > 0 and p.group in ("content", "form", "gate")


# ---------------------------------------------------------------------------------------------
# Judge version 2: what a reader of summaries prefers (Stiennon et al. 2020): the poster in the
# third person, the ask stated, no long copied spans, finished sentences, as gates on the score.

FIRST_PERSON = ("Our beagle Toby, three years old, keeps stealing socks and hiding them under the sofa. "
                "After he swallowed half of one, we paid 300 dollars at the vet, and we ask other beagle "
                "owners for tips.")
THIRD_PERSON = FIRST_PERSON.replace("Our beagle Toby", "The poster's beagle Toby").replace(
    "we paid", "the family paid").replace("and we ask", "and they ask")


def test_a_gate_takes_away_its_weight_of_the_score_and_no_more():
    cut = GOOD.rstrip(".")  # the same words, unfinished
    r, full = score(cut), score(GOOD)
    assert r.rules["complete"] == 0.0 and full.rules["complete"] == 1.0
    assert r.score == pytest.approx(full.score * (1 - J.WEIGHTS["complete"]), abs=1e-5)
    trailing = score(GOOD.rstrip(".") + "...")
    assert trailing.score == pytest.approx(full.score * (1 - J.WEIGHTS["complete"] * 0.5), abs=1e-5)


def test_retelling_the_post_in_the_first_person_loses_to_the_third_person():
    first, third = score(FIRST_PERSON), score(THIRD_PERSON)
    assert first.rules["third_person"] == 0.0 and third.rules["third_person"] == 1.0
    assert any("first person" in n for n in first.notes)
    assert first.score < (1 - J.WEIGHTS["third_person"]) * third.score + 0.05
    assert prefer(POST, FIRST_PERSON, THIRD_PERSON, INSTRUCTION) == 1
    # First-person pronouns later on cost less than opening as the poster; quotes and "US" are fine.
    later = score("Toby the beagle steals socks, and my guess is that we paid 300 dollars at the vet.")
    assert 0.0 < later.rules["third_person"] < 1.0
    quoted = score('Toby the beagle steals socks; the owner asks "what can I do?" after a 300 dollar vet bill.')
    assert quoted.rules["third_person"] == 1.0
    assert score("Toby the beagle from the US steals socks and cost 300 dollars.").rules["third_person"] == 1.0


def test_the_posters_ask_must_be_stated_when_the_post_asks():
    no_ask = GOOD.replace(", so the owner asks other beagle owners for tips.", ".")
    r = score(no_ask)
    assert r.rules["ask"] == 0.0 and any("asks" in n for n in r.notes)
    assert score(GOOD).rules["ask"] == 1.0 and r.score < score(GOOD).score
    # A post that asks nothing needs no ask: the garlic tip.
    assert score("Shaking garlic cloves in a closed jar for 20 seconds peels them.", post=SHORT_POST).rules["ask"] == 1.0


def test_long_verbatim_spans_lose_to_a_paraphrase():
    copied = ("Our beagle Toby keeps stealing socks and hiding them under the sofa. Yesterday he swallowed "
              "half of one, so the owner asks for tips.")
    r = score(copied)
    assert r.rules["verbatim"] < 0.5 and any("words in a row" in n for n in r.notes)
    assert score(GOOD).rules["verbatim"] == 1.0  # "keeps stealing socks and hiding them under the sofa": 9 words
    assert r.rules["concise"] == 1.0  # too short a copy for the old rule: only this one sees it
    assert prefer(POST, copied, GOOD, INSTRUCTION) == 1


def test_each_reference_outscores_the_copy_of_its_posts_first_50_words():
    """The judge agrees with the hand-written references that a copy of the post is no summary."""
    import json

    from rlhf.samples import SAMPLE_DIR

    rows = [json.loads(line) for line in (SAMPLE_DIR / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 35
    for i, row in enumerate(rows, 1):
        post = row["input_text"]
        copy = " ".join(post.split()[:50])
        reference, copied = judge(post, row["reference"], INSTRUCTION), judge(post, copy, INSTRUCTION)
        assert reference.score > copied.score, (i, reference.score, copied.score, copied.notes)
        assert prefer(post, row["reference"], copy, INSTRUCTION) == 0
