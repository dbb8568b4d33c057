"""Judges for tests/test_label.py, loaded by `--judge label_judges:NAME` as a user's would be."""


def longest_first(prompt, candidates):
    """Scores: the longer the better."""
    return [len(c) for c in candidates]


def reverse_order(prompt, candidates):
    """A ranking: the last candidate is best."""
    return {"ranking": list(range(len(candidates)))[::-1]}


def with_instruction(prompt, candidates, instruction=None):
    """Records what it was given, then scores the candidates in their order, the first best."""
    CALLS.append((prompt, list(candidates), instruction))
    return [float(-i) for i in range(len(candidates))]


CALLS: list = []


def one_score_short(prompt, candidates):
    return [1.0] * (len(candidates) - 1)


def not_a_permutation(prompt, candidates):
    return {"ranking": [0] * len(candidates)}


def broken(prompt, candidates):
    raise ConnectionError("endpoint unreachable")


NOT_CALLABLE = 3
