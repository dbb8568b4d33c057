"""A deterministic judge for short summaries: AI feedback from a written constitution, scored by code.

The bundled sample data labels its preference pairs with this judge, and evaluation uses it again
as the independent "gold" judge of base and tuned outputs (it is not the reward model the policy
optimizes, so reward hacking shows as a reward rising while this score falls). As in
Constitutional AI (Bai et al., 2022, arXiv:2212.08073) and RLAIF (Lee et al., 2023,
arXiv:2309.00267), preferences come from written principles instead of human raters; here the
principles are checked by plain Python instead of an LLM, so labels are cheap, reproducible and
explainable.

Constitution: a good summary of POST that follows INSTRUCTION, as a reader of summaries judges it
(the rater guidelines of Stiennon et al. 2020, arXiv:2009.01325: coverage, accuracy, coherence,
overall quality)

1. ``length``      stays within the instruction's word limit ("less than 50 words" allows 49).
2. ``coverage``    mentions the post's key facts: its numbers, its names, its most frequent
                   content words (see `key_facts`).
3. ``faithful``    invents nothing: every number, name and content word comes from the post
                   (up to light stemming and a short list of generic summary words).
4. ``repetition``  says each thing once: no repeated word trigrams, sentences or hammered words.
5. ``direct``      starts with the content: no preamble, sign-off or meta talk ("Sure! Here is a
                   summary:", "I hope this helps"). Describing the post ("The post asks ...") is
                   allowed but costs a little, as it spends words on nothing.
6. ``voice``       reports the post instead of answering it: no "you"/"your" addressed to the
                   poster, no "I recommend".
7. ``concise``     condenses instead of copying: does not reproduce most of the post verbatim,
                   nor run as long as the post.
8. ``plain``       plain prose: no markdown lists, headings, bold, hashtags or emoji.
9. ``sentences``  written in sentences, not as a string of keywords (too few function words).
10. ``complete``   ends with a finished sentence (final punctuation), not cut off mid-way.
11. ``third_person`` reports the poster in the third person ("The poster bought ..."), not the
                   post retold as its author ("I bought ..."): a first-person opening or first-person
                   pronouns.
12. ``verbatim``   paraphrases: no long spans copied word for word from the post (its longest
                   shared run of words and its share of 5-grams found in the post).
13. ``ask``        states what the poster asks or wants when the post asks something ("asks
                   whether ...", "wants advice on ..."): for a reader that is the post's point.

Each rule scores in [0, 1]. Rules 2-3 say whether the summary says the right things (content),
rules 1 and 4-8 whether it says them the right way (form); rules 9-13 are gates, which a reader
does not trade against the rest: a keyword list, a summary cut mid-sentence, the post retold in the
first person or copied out is not a summary however many facts it holds, and one that misses what
the poster asks has missed the point. The judge's score is
content x form x each gate, content and form each the weighted mean of their rules (weights in
`CONSTITUTION`); a gate multiplies the score by 1 - weight x (1 - rule), so its weight is the share
of the score it can take away. A summary with fewer than `MIN_WORDS` words scores 0.

Everything is pure Python and fast (a few milliseconds per summary), so evaluation can run it on
CPU next to any model.

Change `JUDGE_VERSION` whenever a change can move a score: the sample data records the version
that labelled it, and `tests/test_sample_data.py` fails until the data is rebuilt with
`scripts/build_sample_data.py`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Optional

JUDGE_VERSION = "2"

MIN_WORDS = 3
DEFAULT_MAX_WORDS = 49  # the bundled sample data's instruction: "Summarize in less than 50 words."
KEY_FACTS = 8  # how many key facts a post has at most
MAX_KEY_NAMES = 3
MAX_KEY_NUMBERS = 3
COVERAGE_TARGET = 0.75  # recall of key facts that earns the full coverage score
OVER_LIMIT_SLACK = 0.4  # the length score reaches 0 this fraction of the limit past it


@dataclass(frozen=True)
class Principle:
    name: str
    weight: float
    group: str  # "content" or "form" (weighted means), or "gate" (a factor of the score)
    text: str


CONSTITUTION: tuple[Principle, ...] = (
    Principle("length", 3.0, "form", "Stay within the word limit that the instruction sets."),
    Principle("coverage", 1.0, "content",
              "Mention the post's key facts: its numbers, names and main subject."),
    Principle("faithful", 1.0, "content",
              "Invent nothing: no name, number or content that is not in the post."),
    Principle("repetition", 1.5, "form", "Say each thing once: no repeated phrases or sentences."),
    Principle("direct", 1.5, "form",
              "Start with the content: no preamble, sign-off or talk about the task."),
    Principle("voice", 1.5, "form", "Report what the post says; do not answer or advise its author."),
    Principle("concise", 2.0, "form", "Condense: do not copy the post or run as long as it."),
    Principle("plain", 0.5, "form", "Write plain prose: no lists, headings, hashtags or emoji."),
    # Gates: the weight is the share of the whole score the rule can take away.
    Principle("sentences", 1.0, "gate", "Write sentences, not a string of keywords."),
    Principle("complete", 0.5, "gate", "End with a complete sentence."),
    Principle("third_person", 0.6, "gate",
              "Report the poster in the third person; do not retell the post as its author (I, my, we)."),
    Principle("verbatim", 0.6, "gate", "Paraphrase: do not copy long spans of the post word for word."),
    # A gate, not a content rule: stating the ask is worth nothing without the facts (word salad with
    # "which" in it must still score 0), and leaving it out costs a fifth of the score.
    Principle("ask", 0.2, "gate", "State what the poster asks or wants, when the post asks something."),
)
WEIGHTS = {p.name: p.weight for p in CONSTITUTION}
GROUPS = {g: tuple(p.name for p in CONSTITUTION if p.group == g) for g in ("content", "form", "gate")}
MIN_FUNCTION_SHARE = 0.15  # prose is ~40-50% function words, a terse headline ~15%, keywords ~0%


@dataclass
class JudgeResult:
    """The judge's verdict on one summary: the overall score, each rule's score, and why."""

    score: float
    rules: dict[str, float]
    notes: list[str] = field(default_factory=list)
    words: int = 0
    max_words: int = DEFAULT_MAX_WORDS

    def to_dict(self) -> dict:
        return {"score": self.score, "rules": dict(self.rules), "notes": list(self.notes),
                "words": self.words, "max_words": self.max_words}


# ---------------------------------------------------------------------------------------------
# Vocabulary. Function words and generic summary words are neither key facts nor inventions.

STOPWORDS = frozenset("""
a about above after again against ago all almost alone along already also although always am
among an and another any anybody anymore anyone anything anyway anywhere are aren't around as at
away back be became because become been before being below beside besides best better between
both but by can can't cannot could couldn't did didn't do does doesn't doing don't done down
during each either else enough especially even ever every everybody everyone everything
except few for from further get gets getting got gotten had hadn't has hasn't have haven't having
he he'd he's her here hers herself him himself his how however i i'd i'll i'm i've if in
instead into is isn't it it's its itself just last least less let let's like likely little
lot lots made make makes making many may maybe me might mine more most mostly much must my
myself near nearly neither never next no nobody none nor not nothing now of off often oh ok okay
on once one ones only onto or other others otherwise our ours ourselves out over own per perhaps
quite rather really same say said says she she'd she's should shouldn't since so some somebody
someone something sometimes somewhat soon still such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've thing things this those
though through thus to too toward towards under until up upon us very via was wasn't way ways we
we'd we'll we're we've well went were weren't what what's whatever when whenever where whether
which while who whole whom whose why will with within without won't would wouldn't yes yet you
you'd you'll you're you've your yours yourself yourselves
again also actually basically certainly definitely either especially finally honestly
probably simply truly usually sure true real kind sort
go goes going gone come comes coming came take takes taking took taken give gives giving gave
given put puts keep keeps kept seem seems seemed tell tells told ask asked asks asking know
knows knew known think thinks thought want wants wanted need needs needed use used uses using
try tried tries trying feel feels felt look looks looked looking see sees saw seen find found
time times day days year years week weeks month months today yesterday tomorrow tonight
start starts started starting later earlier
""".split())

# Words a faithful summary uses to talk about a post without adding content to it.
GENERIC = frozenset("""
author poster writer user person people op post posts question questions wonder wonders wondering
advice tip tips help helps seek seeks seeking sharing share shares describe describes described
explain explains mention mentions report reports complain complains worry worried worries
concern concerned unsure uncertain frustrate frustrated upset happy glad relieved proud excited
nervous anxious struggle struggles struggling consider considers considering decide decides
deciding decision recommend recommends recommendation recommendations suggest suggests suggestion
suggestions option options experience experiences update story situation problem problems issue
issues trouble plan plans planning hope hopes hoping recent recently current currently
despite whether also summary other others lives live living someone family good bad new old
large small big first second many several both want whose
""".split())

_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
    "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
}
_VAGUE_NUMBER_WORDS = {"one"}  # "one of them" is rarely a fact; it still matches "1" when present

# Day and month names: checked for invention, but too minor to be key facts.
_CALENDAR = frozenset("""
monday tuesday wednesday thursday friday saturday sunday january february march april may june
july august september october november december
""".split())

# Irregular forms, so that "paid" in a summary matches "pay" in the post and vice versa.
_IRREGULAR = {
    w: base
    for base, forms in {
        "pay": "paid", "say": "said", "buy": "bought", "bring": "brought", "think": "thought",
        "break": "broke broken", "leave": "left", "lose": "lost", "sell": "sold", "spend": "spent",
        "teach": "taught", "catch": "caught", "fall": "fell fallen", "give": "gave given",
        "take": "took taken", "write": "wrote written", "eat": "ate eaten", "drive": "drove driven",
        "run": "ran", "begin": "began begun", "choose": "chose chosen", "meet": "met", "feel": "felt",
        "keep": "kept", "sleep": "slept", "win": "won", "hide": "hid hidden", "steal": "stole stolen",
        "swim": "swam swum", "sew": "sewn", "show": "shown", "fly": "flew flown",
        "grow": "grew grown", "know": "knew known",
        "throw": "threw thrown", "build": "built", "send": "sent", "lend": "lent", "find": "found",
        "tell": "told", "sit": "sat", "stand": "stood", "understand": "understood",
        "wake": "woke woken", "bite": "bit bitten", "rise": "rose risen", "go": "went gone",
        "come": "came", "become": "became", "do": "did done", "have": "had", "make": "made",
        "get": "got gotten", "see": "saw seen", "hold": "held", "lead": "led", "hear": "heard",
        "child": "children", "person": "people", "man": "men", "woman": "women", "mouse": "mice",
        "foot": "feet", "tooth": "teeth", "wife": "wives", "life": "lives", "knife": "knives",
    }.items()
    for w in forms.split()
}

_SECOND_PERSON = frozenset("you you're you've you'll you'd your yours yourself yourselves".split())

_TOKEN = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*|\d+(?:[.,:/]\d+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n+")

_SUFFIXES = ("ational", "ations", "ation", "ments", "ment", "ness", "ings", "ing", "ies", "ied",
             "ed", "es", "s")


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light suffix-stripping stemmer: `rent`, `rents`, `rented`, `renting` all become `rent`."""
    w = word.lower().replace("\u2019", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.strip("'")
    w = _IRREGULAR.get(w, w)
    for suffix in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
            break
    if len(w) > 4 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]  # stopped -> stopp -> stop
    if len(w) >= 4 and w.endswith("e"):
        w = w[:-1]  # bake, baked, baking -> bak
    return w


_GENERIC_STEMS = frozenset(stem(w) for w in GENERIC)


def _stems_match(a: str, b: str) -> bool:
    """Equal stems, or one stem (5+ letters) a prefix of the other: `renov` and `renovat`."""
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 5 and long_.startswith(short)


def _in_stems(s: str, stems: set[str]) -> bool:
    return s in stems or any(_stems_match(s, t) for t in stems)


@dataclass(frozen=True)
class _Token:
    text: str
    lower: str
    index: int  # position among the tokens
    sentence_start: bool
    is_number: bool


_SKIP_BEFORE_WORD = frozenset(" \t\"'(\u201c\u2018*-")


def _tokens(text: str) -> list[_Token]:
    out = []
    for m in _TOKEN.finditer(text):
        j = m.start() - 1
        while j >= 0 and text[j] in _SKIP_BEFORE_WORD:
            j -= 1
        sentence_start = j < 0 or text[j] in ".!?:\n"
        raw = m.group(0)
        out.append(_Token(raw, raw.lower().replace("\u2019", "'"), len(out), sentence_start,
                          raw[0].isdigit()))
    return out


def _number_value(tok: _Token) -> Optional[str]:
    """`1,500` -> `1500`; `four` -> `4`; non-numbers -> None."""
    if tok.is_number:
        return tok.lower.replace(",", "")
    return _NUMBER_WORDS.get(tok.lower)


def _bare(tok: _Token) -> str:
    """The lowercase word without a possessive: "poster's" -> "poster"."""
    return tok.lower[:-2] if tok.lower.endswith("'s") else tok.lower


def _is_function(tok: _Token) -> bool:
    return not tok.is_number and _bare(tok) in STOPWORDS


def _is_generic(tok: _Token) -> bool:
    return _bare(tok) in GENERIC or stem(tok.text) in _GENERIC_STEMS


def _is_name(tok: _Token) -> bool:
    """A capitalized word inside a sentence (or an acronym) that is not a function word."""
    if tok.is_number or _is_function(tok) or _is_generic(tok) or tok.lower == "i":
        return False
    if len(tok.text) >= 2 and tok.text.isupper():
        return True
    return tok.text[0].isupper() and not tok.sentence_start


def _is_content(tok: _Token) -> bool:
    return (not tok.is_number and len(tok.lower) >= 3 and not _is_function(tok)
            and not _is_generic(tok) and tok.lower not in _NUMBER_WORDS)


def words(text: str) -> list[str]:
    """Words as a reader counts them: whitespace-separated pieces with a letter or digit."""
    return [w for w in text.split() if any(c.isalnum() for c in w)]


# ---------------------------------------------------------------------------------------------
# Instruction parsing.

_NUM = r"(\d+|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
_LIMIT_PATTERNS = (
    (re.compile(r"\b(?:less|fewer) than " + _NUM + r" words"), -1),
    (re.compile(r"\b(?:under|below) " + _NUM + r" words"), -1),
    (re.compile(r"\b(?:at most|no more than|not more than|up to|a maximum of|maximum of|max\.?|within) "
                + _NUM + r" words"), 0),
    (re.compile(r"\b" + _NUM + r" words or (?:less|fewer)"), 0),
    (re.compile(r"\bin " + _NUM + r" words"), 0),
)


def max_words(instruction: Optional[str]) -> int:
    """The word limit an instruction sets ("less than 50 words" -> 49); `DEFAULT_MAX_WORDS` if none."""
    if instruction:
        text = instruction.lower()
        for pattern, offset in _LIMIT_PATTERNS:
            m = pattern.search(text)
            if m:
                value = m.group(1)
                n = int(value) if value.isdigit() else int(_NUMBER_WORDS[value])
                return max(1, n + offset)
    return DEFAULT_MAX_WORDS


# ---------------------------------------------------------------------------------------------
# Key facts.


def key_facts(post: str) -> list[str]:
    """The post's key facts, most important first: up to `MAX_KEY_NAMES` names (capitalized words
    inside sentences, by first appearance), up to `MAX_KEY_NUMBERS` numbers (digits or number
    words), then the content words the post uses most (ties: first appearance), `KEY_FACTS` in all.
    Names and content words are returned as stems, numbers as digits."""
    toks = _tokens(post)
    names: list[str] = []
    numbers: list[str] = []
    for t in toks:
        if _is_name(t) and t.lower not in _CALENDAR:
            s = stem(t.text)
            if s not in names and len(names) < MAX_KEY_NAMES:
                names.append(s)
        value = _number_value(t)
        if value is not None and t.lower not in _VAGUE_NUMBER_WORDS:
            if value not in numbers and len(numbers) < MAX_KEY_NUMBERS:
                numbers.append(value)
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for t in toks:
        if _is_content(t) and not _is_name(t) and t.lower not in _CALENDAR:
            s = stem(t.text)
            if s in names:
                continue
            counts[s] = counts.get(s, 0) + 1
            first.setdefault(s, t.index)
    ranked = sorted(counts, key=lambda s: (-counts[s], first[s]))
    facts = names + numbers
    return facts + ranked[: max(0, KEY_FACTS - len(facts))]


# ---------------------------------------------------------------------------------------------
# Rules. Each returns (score in [0, 1], notes).


def _rule_length(n_words: int, limit: int) -> tuple[float, list[str]]:
    if n_words <= limit:
        return 1.0, []
    over = n_words - limit
    return max(0.0, 1.0 - over / (OVER_LIMIT_SLACK * limit)), [f"{n_words} words, limit {limit}"]


def _rule_coverage(post: str, summary_toks: list[_Token]) -> tuple[float, list[str]]:
    facts = key_facts(post)
    if not facts:
        return 1.0, []
    stems = {stem(t.text) for t in summary_toks if not t.is_number}
    numbers = {v for t in summary_toks if (v := _number_value(t)) is not None}
    missing = [f for f in facts if not (f in numbers if f[0].isdigit() else _in_stems(f, stems))]
    recall = 1.0 - len(missing) / len(facts)
    notes = [f"missing key facts: {', '.join(missing)}"] if missing else []
    return min(1.0, recall / COVERAGE_TARGET), notes


def _rule_faithful(post_toks: list[_Token], summary_toks: list[_Token]) -> tuple[float, list[str]]:
    post_stems = {stem(t.text) for t in post_toks if not t.is_number}
    post_numbers = {v for t in post_toks if (v := _number_value(t)) is not None}
    invented_facts: list[str] = []  # names and numbers: the worst kind of invention
    invented_words: list[str] = []
    checked = 0
    for t in summary_toks:
        value = _number_value(t)
        if value is not None:
            if t.lower not in _VAGUE_NUMBER_WORDS and value not in post_numbers:
                invented_facts.append(t.text)
            continue
        if _is_name(t):
            if not _in_stems(stem(t.text), post_stems):
                invented_facts.append(t.text)
            continue
        if _is_content(t):
            checked += 1
            if not _in_stems(stem(t.text), post_stems):
                invented_words.append(t.text)
    word_share = len(invented_words) / checked if checked else 0.0
    score = max(0.0, 1.0 - word_share - 0.25 * len(invented_facts))
    notes = []
    if invented_facts:
        notes.append(f"invented names/numbers: {', '.join(invented_facts)}")
    if invented_words:
        notes.append(f"words not in the post: {', '.join(invented_words)}")
    return score, notes


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _rule_repetition(summary_toks: list[_Token], summary: str) -> tuple[float, list[str]]:
    lowered = [t.lower for t in summary_toks]
    trigrams = [tuple(lowered[i : i + 3]) for i in range(len(lowered) - 2)]
    repeated = len(trigrams) - len(set(trigrams))
    share = repeated / len(trigrams) if trigrams else 0.0
    score = max(0.0, 1.0 - 4.0 * share)
    notes = [f"{repeated} repeated word trigrams"] if repeated else []
    seen: set[tuple[str, ...]] = set()  # trigrams of the sentences so far
    for sentence in _sentences(summary):
        words_ = [t.lower for t in _tokens(sentence)]
        grams = {tuple(words_[i : i + 3]) for i in range(len(words_) - 2)}
        # A sentence that mostly restates an earlier one (60%+ of its trigrams) is a repeat.
        if len(words_) >= 4 and len(grams & seen) >= 0.6 * len(grams):
            score = min(score, 0.25)
            notes.append(f"repeated sentence: {sentence[:60]!r}")
            break
        seen |= grams
    counts: dict[str, int] = {}
    for t in summary_toks:
        if _is_content(t) or _is_name(t):
            s = stem(t.text)
            counts[s] = counts.get(s, 0) + 1
    hammered = {s: c for s, c in counts.items() if c >= 3}
    if hammered:
        score = max(0.0, score - 0.1 * sum(c - 2 for c in hammered.values()))
        notes.append(f"words used 3+ times: {', '.join(sorted(hammered))}")
    return score, notes


_CHATTER = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"^\W*(sure|certainly|of course|absolutely|okay|ok|alright|hello|hi|great question)\b",
    r"\bhere(?:'s|\u2019s| is| are)\b[^.!?\n]{0,40}\b(summary|summari[sz]ed|version|recap|breakdown|tl;?dr)",
    r"\b(i hope (this|that) helps|hope this helps|let me know|feel free|happy to help|glad to help"
    r"|i'd be happy|i would be happy|as an ai|i can help)\b",
    r"\b(in |with )?(less|fewer) than \w+ words\b",
    r"\(\s*\d+\s*words?\s*\)|\bword count\b",
))
_LABEL = re.compile(r"^\W*(summary|summarized|tl;?\s?dr)\s*:", re.IGNORECASE)
_META = re.compile(r"^\W*(in )?(this|the) (post|text|passage|article|message|story)\b", re.IGNORECASE)


def _rule_direct(summary: str) -> tuple[float, list[str]]:
    for pattern in _CHATTER:
        m = pattern.search(summary)
        if m:
            return 0.0, [f"preamble or sign-off: {m.group(0).strip()!r}"]
    if _LABEL.search(summary):
        return 0.5, ["starts with a label"]
    if _META.search(summary):
        return 0.75, ["talks about the post instead of its content"]
    return 1.0, []


_ADVICE = re.compile(r"\bi(?: would|'d|\u2019d)? (?:recommend|suggest|advise)\b", re.IGNORECASE)


def _rule_voice(summary_toks: list[_Token], summary: str) -> tuple[float, list[str]]:
    second = sum(t.lower in _SECOND_PERSON for t in summary_toks)
    advice = len(_ADVICE.findall(summary))
    count = second + advice
    if not count:
        return 1.0, []
    return max(0.0, 1.0 - 0.34 * count), [f"addresses the poster ({count}x you/your/advice)"]


def _rule_complete(summary: str) -> tuple[float, list[str]]:
    text = summary.rstrip().rstrip("\"')\u201d\u2019]")
    if text.endswith(("...", "\u2026")):
        return 0.5, ["trails off"]
    if text.endswith((".", "!", "?")):
        return 1.0, []
    return 0.0, ["last sentence is unfinished"]


def _rule_concise(post_toks: list[_Token], summary_toks: list[_Token]) -> tuple[float, list[str]]:
    post = [t.lower for t in post_toks]
    summ = [t.lower for t in summary_toks]
    n = 5  # a copied run of 5+ words is quoting, shorter overlaps are normal reuse of words
    summary_grams = {tuple(summ[i : i + n]) for i in range(len(summ) - n + 1)}
    covered = [False] * len(post)
    for i in range(len(post) - n + 1):
        if tuple(post[i : i + n]) in summary_grams:
            covered[i : i + n] = [True] * n
    copied = sum(covered) / len(post) if post else 0.0
    score = 1.0 - min(1.0, max(0.0, (copied - 0.5) / 0.4))
    notes = [f"copies {copied:.0%} of the post verbatim"] if copied > 0.5 else []
    ratio = len(summ) / len(post) if post else 0.0
    if ratio > 0.8:
        score *= max(0.0, 1.0 - (ratio - 0.8) / 0.4)
        notes.append(f"{ratio:.0%} as long as the post")
    return score, notes


# A post asks something when a sentence ends with "?" or it says so in words.
_POST_ASKS = re.compile(
    r"\?|\b(any (tips|advice|ideas|suggestions|recommendations|thoughts)|looking for (advice|tips|ideas|help)"
    r"|(need|want|appreciate) (some )?(advice|help|tips|suggestions)|should i|should we|wondering)\b",
    re.IGNORECASE)
# A summary states the ask when it reports it ("asks whether", "wants advice") or quotes a question.
_STATES_ASK = re.compile(
    r"\?|\b(ask|asks|asked|asking|wonder|wonders|wondered|wondering|seek|seeks|seeking|request|requests"
    r"|want(s|ed)? to know|want(s|ed)? (some )?(advice|tips|ideas|help|suggestions|opinions)"
    r"|looking for|hop(es|ing) for|unsure (whether|if|how|what)|whether|how to|what to|which)\b",
    re.IGNORECASE)


def _rule_ask(post: str, summary: str) -> tuple[float, list[str]]:
    if not _POST_ASKS.search(post) or _STATES_ASK.search(summary):
        return 1.0, []
    return 0.0, ["does not say what the poster asks"]


_FIRST_PERSON = frozenset("i i'm i've i'd i'll me my mine myself we we're we've we'd we'll us our ours "
                          "ourselves".split())
_QUOTED = re.compile(r"\"[^\"]*\"|\u201c[^\u201d]*\u201d")


def _rule_third_person(summary_toks: list[_Token], summary: str) -> tuple[float, list[str]]:
    """0 when the summary opens as the poster ("I bought ..."); else each first-person pronoun outside
    quotes costs 0.25 ("US" the country is not "us"); a quoted question ("asks: 'should I?'") is fine."""
    unquoted = _tokens(_QUOTED.sub(" ", summary))
    count = sum(t.lower in _FIRST_PERSON and t.text != "US" for t in unquoted)
    if summary_toks and summary_toks[0].lower in _FIRST_PERSON and summary_toks[0].text != "US":
        return 0.0, [f"retells the post in the first person ({summary_toks[0].text} ...)"]
    if not count:
        return 1.0, []
    return max(0.0, 1.0 - 0.25 * count), [f"{count} first-person pronouns (I/my/we/our)"]


# A reader notices a copied run of about ten words; the references copy about 5% of their 5-grams.
VERBATIM_RUN = (10, 25)  # longest run copied from the post: full score up to the first, 0 at the second
VERBATIM_SHARE = (0.25, 0.75)  # share of the summary's 5-grams found in the post: the same


def _ramp(value: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return 1.0 - min(1.0, max(0.0, (value - lo) / (hi - lo)))


def _rule_verbatim(post_toks: list[_Token], summary_toks: list[_Token]) -> tuple[float, list[str]]:
    post = [t.lower for t in post_toks]
    summ = [t.lower for t in summary_toks]
    post_index: dict[str, list[int]] = {}
    for j, w in enumerate(post):
        post_index.setdefault(w, []).append(j)
    longest = 0  # the longest run of summary words that also occurs in the post
    for i in range(len(summ)):
        for j in post_index.get(summ[i], ()):
            k = 0
            while i + k < len(summ) and j + k < len(post) and summ[i + k] == post[j + k]:
                k += 1
            longest = max(longest, k)
    n = 5
    post_grams = {tuple(post[i : i + n]) for i in range(len(post) - n + 1)}
    grams = [tuple(summ[i : i + n]) for i in range(len(summ) - n + 1)]
    share = sum(g in post_grams for g in grams) / len(grams) if grams else 0.0
    score = min(_ramp(longest, VERBATIM_RUN), _ramp(share, VERBATIM_SHARE))
    notes = []
    if score < 1.0:
        notes.append(f"copies {longest} words in a row and {share:.0%} of its 5-grams from the post")
    return score, notes


_MARKDOWN = re.compile(r"(?m)^\s*([-*\u2022]|\d+[.)]|#+)\s+|\*\*|__")
_HASHTAG_EMOJI = re.compile(r"(?<!\w)#\w|[\U0001F300-\U0001FAFF\u2600-\u27BF]")


def _rule_plain(summary: str) -> tuple[float, list[str]]:
    if _MARKDOWN.search(summary):
        return 0.0, ["markdown formatting"]
    if _HASHTAG_EMOJI.search(summary):
        return 0.5, ["hashtags or emoji"]
    if re.search(r"\n\s*\n", summary.strip()):
        return 0.5, ["several paragraphs"]
    return 1.0, []


def _rule_sentences(summary_toks: list[_Token]) -> tuple[float, list[str]]:
    word_toks = [t for t in summary_toks if not t.is_number]
    share = sum(map(_is_function, word_toks)) / len(word_toks) if word_toks else 0.0
    if share >= MIN_FUNCTION_SHARE:
        return 1.0, []
    return (share / MIN_FUNCTION_SHARE) ** 2, [f"reads like a keyword list ({share:.0%} function words)"]


# ---------------------------------------------------------------------------------------------
# The judge.


def judge(post: str, summary: str, instruction: Optional[str] = None) -> JudgeResult:
    """Score `summary` as a summary of `post` under `instruction` (its word limit; the default limit
    when it has none). Deterministic: the same inputs always give the same result."""
    limit = max_words(instruction)
    n_words = len(words(summary))
    if n_words < MIN_WORDS:
        return JudgeResult(0.0, {p.name: 0.0 for p in CONSTITUTION},
                           [f"empty or nearly empty ({n_words} words)"], n_words, limit)
    post_toks = _tokens(post)
    summary_toks = _tokens(summary)
    results = {
        "length": _rule_length(n_words, limit),
        "coverage": _rule_coverage(post, summary_toks),
        "faithful": _rule_faithful(post_toks, summary_toks),
        "repetition": _rule_repetition(summary_toks, summary),
        "direct": _rule_direct(summary),
        "voice": _rule_voice(summary_toks, summary),
        "complete": _rule_complete(summary),
        "concise": _rule_concise(post_toks, summary_toks),
        "plain": _rule_plain(summary),
        "sentences": _rule_sentences(summary_toks),
        "ask": _rule_ask(post, summary),
        "third_person": _rule_third_person(summary_toks, summary),
        "verbatim": _rule_verbatim(post_toks, summary_toks),
    }
    rules = {name: round(results[name][0], 6) for name in WEIGHTS}
    notes = [f"{name}: {note}" for name in WEIGHTS for note in results[name][1]]
    score = _weighted_mean(rules, GROUPS["content"]) * _weighted_mean(rules, GROUPS["form"])
    for name in GROUPS["gate"]:
        score *= 1.0 - WEIGHTS[name] * (1.0 - rules[name])
    return JudgeResult(round(score, 6), rules, notes, n_words, limit)


def _weighted_mean(rules: dict[str, float], names: tuple[str, ...]) -> float:
    return sum(WEIGHTS[n] * rules[n] for n in names) / sum(WEIGHTS[n] for n in names)


def prefer(post: str, a: str, b: str, instruction: Optional[str] = None) -> int:
    """0 if summary `a` is better than `b`, else 1. Ties go to the shorter summary (in words), then
    to the alphabetically first, so the answer never depends on the order of the arguments."""
    sa = judge(post, a, instruction).score
    sb = judge(post, b, instruction).score
    if sa != sb:
        return 0 if sa > sb else 1
    na, nb = len(words(a)), len(words(b))
    if na != nb:
        return 0 if na < nb else 1
    return 0 if a <= b else 1
