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
from rlhf.evaluate import extractive as X
from rlhf.evaluate import metrics as M

# The models compared, in the order shown: the base, the SFT model when the tuned policy's base is one
# (rlhf.evaluate.lineage), the tuned policy. Metric names keep "base" for the original base.
ALL_GROUPS = ("base", "sft", "tuned")


def groups_of(by_group) -> tuple[str, ...]:
    """The groups a dict holds (name -> anything), in ``ALL_GROUPS`` order."""
    return tuple(g for g in ALL_GROUPS if g in by_group)


@dataclass
class Sample:
    """One prompt with each model's response, for the report's side-by-side section (``sft`` None when
    no SFT model was compared)."""

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
    sft: Optional[str] = None
    judge_sft: Optional[float] = None
    reward_sft: Optional[float] = None
    judge_notes_sft: list[str] = field(default_factory=list)


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
    # One JSON-ready row per prompt (predictions/scores.jsonl): every model's response and score.
    per_prompt: list[dict] = field(default_factory=list)
    groups: tuple[str, ...] = ("base", "tuned")  # the models compared (ALL_GROUPS order)


@dataclass
class RewardScores:
    """The reward model's scores of each group ("base"/"tuned" -> one per prompt), and its
    preference metrics on the eval rows that carry a chosen/rejected pair (empty if none do)."""

    raw: dict[str, list[float]]
    normalized: dict[str, list[float]]
    preference: dict[str, float] = field(default_factory=dict)
    # A classifier reward model: its P(reward class) of each group's responses, and that class.
    probabilities: dict[str, list[float]] = field(default_factory=dict)
    label: str = ""


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


def sft_comparisons(kind: str, scores: dict[str, list[float]]) -> dict[str, float]:
    """With an SFT group: the tuned policy against the SFT model it was tuned from, and the SFT model
    against the base (``eval/{kind}_delta_vs_sft``, ``..._win_rate_vs_sft``, ``..._sft_delta_vs_base``,
    ``..._sft_win_rate_vs_base``); nothing without one. Ties count half, as in the base win rate."""
    if "sft" not in scores:
        return {}
    base, sft, tuned = scores["base"], scores["sft"], scores["tuned"]
    return {f"eval/{kind}_delta_vs_sft": M.mean(tuned) - M.mean(sft),
            f"eval/{kind}_win_rate_vs_sft": M.win_rate(tuned, sft),
            f"eval/{kind}_sft_delta_vs_base": M.mean(sft) - M.mean(base),
            f"eval/{kind}_sft_win_rate_vs_base": M.win_rate(sft, base)}


def reward_metrics(raw: dict[str, list[float]], normalized: dict[str, list[float]]) -> dict[str, float]:
    m = {}
    for name in groups_of(raw):
        m[f"eval/reward_{name}_mean"] = M.mean(raw[name])
        m[f"eval/reward_{name}_std"] = M.std(raw[name])
        m[f"eval/reward_{name}_normalized_mean"] = M.mean(normalized[name])
    m["eval/reward_delta"] = m["eval/reward_tuned_mean"] - m["eval/reward_base_mean"]
    m["eval/reward_win_rate"] = M.win_rate(raw["tuned"], raw["base"])
    m.update(sft_comparisons("reward", raw))
    return m


def judge_metrics(judged: dict[str, list[float]]) -> dict[str, float]:
    m = {f"eval/judge_{name}_mean": M.mean(judged[name]) for name in groups_of(judged)}
    m["eval/judge_delta"] = m["eval/judge_tuned_mean"] - m["eval/judge_base_mean"]
    # From the scores, ties half (not `judge.prefer`, which breaks ties by length).
    m["eval/judge_win_rate"] = M.win_rate(judged["tuned"], judged["base"])
    m.update(sft_comparisons("judge", judged))
    return m


def extractive_metrics(rows: Sequence[canonical.EvalExample], gens: dict[str, list]) -> dict[str, float]:
    """How much each group's responses copy the post (`rlhf.evaluate.extractive`), and the hand-written
    references' figures on the rows that have one (``eval/extractive/{stat}_reference``)."""
    posts = [canonical.user_input(r) for r in rows]
    m = {}
    for name in groups_of(gens):
        stats = X.group_metrics(posts, [g.text for g in gens[name]], [g.finished for g in gens[name]])
        m.update({f"eval/extractive/{stat}_{name}": v for stat, v in stats.items()})
    with_ref = [i for i, r in enumerate(rows) if r.reference]
    if with_ref:
        stats = X.group_metrics([posts[i] for i in with_ref], [rows[i].reference for i in with_ref])
        m.update({f"eval/extractive/{stat}_reference": v for stat, v in stats.items()})
    return m


def rouge(rows: Sequence[canonical.EvalExample], texts: dict[str, list[str]]
          ) -> tuple[dict[str, float], dict[str, list[Optional[float]]]]:
    """ROUGE-L of every group on the rows with a reference: (metrics, per-row scores or None)."""
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
    """One row per prompt: every group's response with every score (None where a score was not taken)."""
    def score(d, name, i):
        return d[name][i] if d else None

    out = []
    for i, r in enumerate(rows):
        entry = {"index": i, "source": r.source, "prompt": canonical.prompt_text(r), "reference": r.reference}
        for name in groups_of(gens):
            g = gens[name][i]
            entry[name] = {"response": g.text, "tokens": len(g.response_ids), "finished": g.finished,
                           "reward": score(raw, name, i), "reward_normalized": score(normalized, name, i),
                           "judge": score(judged, name, i),
                           "judge_notes": verdicts[name][i].notes if verdicts else [],
                           "rouge_l": rouge_per_row[name][i],
                           "extractive": X.measure(canonical.user_input(r), g.text).to_dict()}
        if kl is not None:
            entry["kl_seq"], entry["kl_full_seq"] = kl.k1_per_sequence[i], kl.full_per_sequence[i]
        out.append(entry)
    return out


def sample_of(row: dict) -> Sample:
    """A per-prompt row as the report's side-by-side sample."""
    base, tuned = row["base"], row["tuned"]
    sample = Sample(prompt=row["prompt"], base=base["response"], tuned=tuned["response"],
                    reference=row["reference"] or "", judge_base=base["judge"], judge_tuned=tuned["judge"],
                    reward_base=base["reward"], reward_tuned=tuned["reward"],
                    judge_notes_base=base["judge_notes"], judge_notes_tuned=tuned["judge_notes"])
    if "sft" in row:
        sft = row["sft"]
        sample.sft, sample.judge_sft, sample.reward_sft = sft["response"], sft["judge"], sft["reward"]
        sample.judge_notes_sft = sft["judge_notes"]
    return sample


# ------------------------------------------------------------------------------------------------


def describe_run(config, base_reference: str, history_uri: str, kl_measured: bool,
                 lineage=None) -> dict[str, str]:
    """The report's run description (an `EvalConfig` in): models, data, decoding, KL estimator.
    ``lineage``: an `rlhf.evaluate.lineage.SFTLineage` when the base was an SFT model."""
    decoding = (f"sampling (temperature {config.temperature}, top-p {config.top_p}, top-k {config.top_k}, "
                f"seed {config.seed})" if config.sampling else "greedy")
    info = {"Tuned model": config.model, "Base model": base_reference}
    reference = "base"
    if lineage is not None:  # the tuned policy's base is the SFT model: its KL reference too
        info["Base model"] = lineage.original_base
        info["SFT model"] = f"{lineage.sft_model} (the tuned policy's base and KL reference; {lineage.source})"
        reference = "SFT"
    info.update({"Eval data": config.eval_dataset, "Reward model": config.reward_model or "(none)",
                 "Training history": history_uri or "(none)",
                 "Decoding": f"{decoding}, up to {config.target_sequence_length} new tokens, prompts up to "
                             f"{config.prompt_sequence_length} tokens"})
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
            + (f"an unbiased estimate of KL(tuned || {reference}) because responses are sampled"
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

    ``gens``: "base"/"tuned" (and "sft" when an SFT model was compared) -> `Generation` per row;
    ``kl``: a `KLResult` or None (not measured);
    ``reward``: the reward model's scores or None (no reward model); ``verdicts``: "base"/"tuned" ->
    `rlhf.judge.JudgeResult` per row, or None (judge off); ``classifiers``: classifier name ->
    group -> P(its label) per row (`rlhf.evaluate.classifiers`). The reward-hacking alarm is
    raised when both the reward model and the judge scored; the copying alarm
    (`metrics.copying_alarm`) whatever was scored, and both read as one message."""
    texts = {name: [g.text for g in g_list] for name, g_list in gens.items()}
    notes: list[str] = []
    metrics: dict[str, float] = {"eval/num_prompts": float(len(rows))}
    metrics.update(timing or {})
    metrics.update(length_metrics(gens))
    if kl is not None:
        metrics.update(kl_metrics(kl))
    rouge_metrics, rouge_per_row = rouge(rows, texts)
    metrics.update(rouge_metrics)
    metrics.update(extractive_metrics(rows, gens))

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
        if "sft" in raw:  # PPO started from the SFT model: a gain over it alone can be hacked too
            vs_sft = M.reward_hacking_alarm(metrics["eval/reward_sft_mean"], metrics["eval/reward_tuned_mean"],
                                            metrics["eval/judge_sft_mean"], metrics["eval/judge_tuned_mean"])
            metrics["eval/reward_hacking_alarm_vs_sft"] = 1.0 if vs_sft else 0.0
            alarm = alarm or (f"Against the SFT model the policy was tuned from: {vs_sft}" if vs_sft else None)

    copying = M.copying_alarm(*(metrics.get(f"eval/extractive/copied_5gram_share_{g}", float("nan"))
                                for g in ("base", "tuned", "reference", "sft")))
    metrics["eval/copying_alarm"] = 1.0 if copying else 0.0
    alarm = " ".join(a for a in (alarm, copying) if a) or None

    per_prompt = per_prompt_rows(rows, gens, kl, raw, normalized, judged, verdicts or {}, rouge_per_row)
    if classifiers:
        from rlhf.evaluate.classifiers import classifier_metrics
        for name, probs in classifiers.items():
            metrics.update(classifier_metrics(name, probs))
        for i, entry in enumerate(per_prompt):
            for group in groups_of(gens):
                entry[group]["classifiers"] = {name: probs[group][i] for name, probs in classifiers.items()}
    return Results(metrics=metrics, info=dict(info or {}), alarm=alarm, reward_scores=raw,
                   judge_scores=judged, judge_rules=judge_rules, history=list(history),
                   samples=[sample_of(row) for row in per_prompt[:num_samples]], notes=notes,
                   per_prompt=per_prompt, groups=groups_of(gens))
