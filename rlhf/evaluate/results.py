"""What an evaluation found: metrics and per-prompt rows computed from the generations and scores,
held in one `Results` object before anything is rendered.

    run.py      generate with both models, score with the reward model and the judge
    results.py  -> `Results`: metrics, per-prompt rows, report samples, notes, alarm   (this module)
    report.py   `Results` -> HTML report, Markdown summary, KFP metrics

Nothing here loads a model or writes a file, so the numbers are tested from plain lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from rlhf.data import canonical
from rlhf.evaluate import metrics as M

GROUPS = ("base", "tuned")


@dataclass
class Sample:
    """One prompt with both responses, for the report's side-by-side section."""

    prompt: str
    base: str
    tuned: str
    reference: str = ""
    judge_base: Optional[float] = None
    judge_tuned: Optional[float] = None
    reward_base: Optional[float] = None
    reward_tuned: Optional[float] = None
    judge_notes_base: list[str] = field(default_factory=list)  # why the judge took points off
    judge_notes_tuned: list[str] = field(default_factory=list)


@dataclass
class Results:
    """Everything the renderers need, and nothing they must compute."""

    metrics: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)  # run description: model, base, data, decoding
    alarm: Optional[str] = None
    reward_scores: dict[str, list[float]] = field(default_factory=dict)  # "base"/"tuned" -> scores
    judge_scores: dict[str, list[float]] = field(default_factory=dict)
    judge_rules: dict[str, dict[str, float]] = field(default_factory=dict)  # "base"/"tuned" -> rule -> mean
    history: list[dict] = field(default_factory=list)  # PPO metrics.jsonl rows
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    # One JSON-ready row per prompt (predictions/scores.jsonl): both responses and every score.
    per_prompt: list[dict] = field(default_factory=list)


@dataclass
class RewardScores:
    """The reward model's scores of each group ("base"/"tuned" -> one per prompt), and its
    preference metrics on the eval rows that carry a chosen/rejected pair (empty if none do)."""

    raw: dict[str, list[float]]
    normalized: dict[str, list[float]]
    preference: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Metrics


def length_metrics(gens: dict[str, list]) -> dict[str, float]:
    """Mean response length in tokens (EOS included) and words, and the share that ended with EOS."""
    m = {}
    for name, g in gens.items():
        m[f"eval/length_tokens_{name}_mean"] = M.mean([len(x.response_ids) for x in g])
        m[f"eval/length_words_{name}_mean"] = M.mean([M.word_count(x.text) for x in g])
        m[f"eval/eos_{name}_fraction"] = M.mean([1.0 if x.finished else 0.0 for x in g])
    return m


def kl_metrics(kl) -> dict[str, float]:
    """`rlhf.evaluate.kl.KLResult` as metrics: k1 and exact KL, per token and per response."""
    return {"eval/kl": kl.k1_token_mean, "eval/kl_seq": kl.k1_sequence_mean,
            "eval/kl_full": kl.full_token_mean, "eval/kl_full_seq": kl.full_sequence_mean}


def reward_metrics(raw: dict[str, list[float]], normalized: dict[str, list[float]]) -> dict[str, float]:
    m = {}
    for name in GROUPS:
        m[f"eval/reward_{name}_mean"] = M.mean(raw[name])
        m[f"eval/reward_{name}_std"] = M.std(raw[name])
        m[f"eval/reward_{name}_normalized_mean"] = M.mean(normalized[name])
    m["eval/reward_delta"] = m["eval/reward_tuned_mean"] - m["eval/reward_base_mean"]
    m["eval/reward_win_rate"] = M.win_rate(raw["tuned"], raw["base"])
    return m


def judge_metrics(judged: dict[str, list[float]]) -> dict[str, float]:
    m = {f"eval/judge_{name}_mean": M.mean(judged[name]) for name in GROUPS}
    m["eval/judge_delta"] = m["eval/judge_tuned_mean"] - m["eval/judge_base_mean"]
    # From the scores, ties half (not `judge.prefer`, which breaks ties by length).
    m["eval/judge_win_rate"] = M.win_rate(judged["tuned"], judged["base"])
    return m


def rouge(rows: Sequence[canonical.EvalExample], texts: dict[str, list[str]]
          ) -> tuple[dict[str, float], dict[str, list[Optional[float]]]]:
    """ROUGE-L of both groups on the rows with a reference: (metrics, per-row scores or None)."""
    with_ref = [i for i, r in enumerate(rows) if r.reference]
    per_row: dict[str, list[Optional[float]]] = {name: [None] * len(rows) for name in texts}
    if not with_ref:
        return {}, per_row
    m = {"eval/num_with_reference": float(len(with_ref))}
    for name in texts:
        scores = M.rouge_l([texts[name][i] for i in with_ref], [rows[i].reference for i in with_ref])
        m[f"eval/rouge_l_{name}"] = M.mean(scores)
        for i, s in zip(with_ref, scores):
            per_row[name][i] = s
    return m, per_row


# ------------------------------------------------------------------------------------------------
# Per-prompt rows


def per_prompt_rows(rows: Sequence[canonical.EvalExample], gens: dict[str, list], kl,
                    raw: dict[str, list[float]], normalized: dict[str, list[float]],
                    judged: dict[str, list[float]], verdicts: dict[str, list],
                    rouge_per_row: dict[str, list[Optional[float]]]) -> list[dict]:
    """One row per prompt: both responses with every score (None where a score was not taken)."""
    def score(d, name, i):
        return d[name][i] if d else None

    out = []
    for i, r in enumerate(rows):
        entry = {"index": i, "source": r.source, "prompt": canonical.prompt_text(r), "reference": r.reference}
        for name in GROUPS:
            g = gens[name][i]
            entry[name] = {"response": g.text, "tokens": len(g.response_ids), "finished": g.finished,
                           "reward": score(raw, name, i), "reward_normalized": score(normalized, name, i),
                           "judge": score(judged, name, i),
                           "judge_notes": verdicts[name][i].notes if verdicts else [],
                           "rouge_l": rouge_per_row[name][i]}
        if kl is not None:
            entry["kl_seq"], entry["kl_full_seq"] = kl.k1_per_sequence[i], kl.full_per_sequence[i]
        out.append(entry)
    return out


def sample_of(row: dict) -> Sample:
    """A per-prompt row as the report's side-by-side sample."""
    base, tuned = row["base"], row["tuned"]
    return Sample(prompt=row["prompt"], base=base["response"], tuned=tuned["response"],
                  reference=row["reference"] or "", judge_base=base["judge"], judge_tuned=tuned["judge"],
                  reward_base=base["reward"], reward_tuned=tuned["reward"],
                  judge_notes_base=base["judge_notes"], judge_notes_tuned=tuned["judge_notes"])


# ------------------------------------------------------------------------------------------------


def describe_run(config, base_reference: str, history_uri: str, kl_measured: bool) -> dict[str, str]:
    """The report's run description (an `EvalConfig` in): models, data, decoding, KL estimator."""
    decoding = (f"sampling (temperature {config.temperature}, top-p {config.top_p}, top-k {config.top_k}, "
                f"seed {config.seed})" if config.sampling else "greedy")
    info = {"Tuned model": config.model, "Base model": base_reference, "Eval data": config.eval_dataset,
            "Reward model": config.reward_model or "(none)", "Training history": history_uri or "(none)",
            "Decoding": f"{decoding}, up to {config.target_sequence_length} new tokens, prompts up to "
                        f"{config.prompt_sequence_length} tokens"}
    if config.reward_model:  # a classifier's reward is one class's score: say which
        from rlhf.reward.outputs import read_info
        reward_info = read_info(config.reward_model)
        if reward_info.get("labels"):
            label = config.positive_label or reward_info.get("positive_label")
            info["Reward score"] = (f"classifier, class {label!r} "
                                    f"{'log-probability' if reward_info.get('reward_from') == 'logprob' else 'logit'}")
    if kl_measured:
        info["KL estimator"] = (
            "along the tuned model's responses; eval/kl is the mean log-ratio (k1), "
            + ("an unbiased estimate of KL(tuned || base) because responses are sampled"
               if config.sampling and config.temperature == 1.0 and config.top_p == 1.0 and not config.top_k else
               "here the log-ratio along decoded (not temperature-1 sampled) responses, a proxy for the KL")
            + "; eval/kl_full is the exact KL of the next-token distributions along the same tokens (>= 0)")
    return info


def compute_results(rows: Sequence[canonical.EvalExample], gens: dict[str, list], *, kl=None,
                    reward: Optional[RewardScores] = None, verdicts: Optional[dict[str, list]] = None,
                    timing: Optional[dict[str, float]] = None, info: Optional[dict[str, str]] = None,
                    history: Sequence[dict] = (), num_samples: int = 0,
                    classifiers: Optional[dict[str, dict[str, list[float]]]] = None) -> Results:
    """All metrics and per-prompt rows of one evaluation.

    ``gens``: "base"/"tuned" -> `Generation` per row; ``kl``: a `KLResult` or None (not measured);
    ``reward``: the reward model's scores or None (no reward model); ``verdicts``: "base"/"tuned" ->
    `rlhf.judge.JudgeResult` per row, or None (judge off); ``classifiers``: classifier name ->
    "base"/"tuned" -> P(its label) per row (`rlhf.evaluate.classifiers`). The reward-hacking alarm is
    raised when both the reward model and the judge scored."""
    texts = {name: [g.text for g in g_list] for name, g_list in gens.items()}
    notes: list[str] = []
    metrics: dict[str, float] = {"eval/num_prompts": float(len(rows))}
    metrics.update(timing or {})
    metrics.update(length_metrics(gens))
    if kl is not None:
        metrics.update(kl_metrics(kl))
    rouge_metrics, rouge_per_row = rouge(rows, texts)
    metrics.update(rouge_metrics)

    raw: dict[str, list[float]] = {}
    normalized: dict[str, list[float]] = {}
    if reward is not None:
        raw, normalized = reward.raw, reward.normalized
        metrics.update(reward_metrics(raw, normalized))
        metrics.update(reward.preference)
        if not reward.preference:
            notes.append("no eval row carries a chosen/rejected pair: reward-model accuracy not measured")
    else:
        notes.append("no reward model given: reward-model scores and the reward-hacking alarm are skipped")

    judged: dict[str, list[float]] = {}
    judge_rules: dict[str, dict[str, float]] = {}
    if verdicts is not None:
        judged = {name: [v.score for v in vs] for name, vs in verdicts.items()}
        judge_rules = {name: {rule: M.mean([v.rules[rule] for v in vs]) for rule in vs[0].rules}
                       for name, vs in verdicts.items()}
        metrics.update(judge_metrics(judged))
    else:
        notes.append("the judge was turned off (--no-judge): no judge win rate")

    alarm = None
    if raw and judged:
        alarm = M.reward_hacking_alarm(metrics["eval/reward_base_mean"], metrics["eval/reward_tuned_mean"],
                                       metrics["eval/judge_base_mean"], metrics["eval/judge_tuned_mean"])
        metrics["eval/reward_hacking_alarm"] = 1.0 if alarm else 0.0

    per_prompt = per_prompt_rows(rows, gens, kl, raw, normalized, judged, verdicts or {}, rouge_per_row)
    if classifiers:
        from rlhf.evaluate.classifiers import classifier_metrics
        for name, probs in classifiers.items():
            metrics.update(classifier_metrics(name, probs))
        for i, entry in enumerate(per_prompt):
            for group in GROUPS:
                entry[group]["classifiers"] = {name: probs[group][i] for name, probs in classifiers.items()}
    return Results(metrics=metrics, info=dict(info or {}), alarm=alarm, reward_scores=raw,
                   judge_scores=judged, judge_rules=judge_rules, history=list(history),
                   samples=[sample_of(row) for row in per_prompt[:num_samples]], notes=notes,
                   per_prompt=per_prompt)
