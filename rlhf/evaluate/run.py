"""The evaluation step: base vs tuned on the eval prompts, end to end.

    examples -> bulk inference (tuned, with KL measured on the way; then base) -> predictions JSONL
             -> reward-model scores, judge scores, ROUGE-L, lengths -> metrics, alarm
             -> report.html, summary.md, metrics.json, scores.jsonl

Outputs (`EvalOutputs.in_dir(output_dir)`):
    predictions/base.jsonl, predictions/tuned.jsonl   Google bulk-inferrer rows
    predictions/scores.jsonl                          per prompt: both responses and every score
    report.html, summary.md, metrics.json
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

from rlhf import models, storage
from rlhf.data import canonical
from rlhf.evaluate import metrics as M
from rlhf.evaluate import report as R
from rlhf.evaluate.config import EvalConfig
from rlhf.evaluate.data import load_eval_examples
from rlhf.evaluate.history import read_history
from rlhf.evaluate.inference import Generation, GenerationSettings, generate, prediction_row, write_predictions

log = logging.getLogger(__name__)


@dataclass
class EvalOutputs:
    """Where one evaluation writes its files (local paths or gs:// URIs)."""

    predictions_dir: str
    report_html: str
    summary_md: str
    metrics_json: str

    @classmethod
    def in_dir(cls, directory: str) -> "EvalOutputs":
        return cls(predictions_dir=storage.join(directory, "predictions"),
                   report_html=storage.join(directory, "report.html"),
                   summary_md=storage.join(directory, "summary.md"),
                   metrics_json=storage.join(directory, "metrics.json"))


@dataclass
class EvalResult:
    metrics: dict[str, float]
    summary: str  # the Markdown summary
    alarm: Optional[str]
    outputs: EvalOutputs
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Scores from the other steps' models


def reward_scores(reward_model: str, rows: list[canonical.EvalExample], responses: dict[str, list[str]],
                  config: EvalConfig) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Raw and normalized reward-model scores of each group of responses ({"base": [...], "tuned": [...]}),
    and the reward model's preference metrics on the rows that carry a chosen/rejected pair."""
    from rlhf.reward.metrics import preference_metrics, scalar_metrics
    from rlhf.reward.scorer import RewardScorer

    scorer = RewardScorer(reward_model, device=config.device or None, batch_size=config.batch_size)
    raw, normalized = {}, {}
    for name, texts in responses.items():
        # Rows keep their own instruction; one without gets the reward model's training instruction.
        scores = scorer.score_rows(rows, texts)
        raw[name], normalized[name] = [float(x) for x in scores.raw], [float(x) for x in scores.normalized]
    pairs = [r for r in rows if r.chosen is not None and r.rejected is not None]
    pref: dict[str, float] = {}
    if pairs:
        chosen = scorer.score_rows(pairs, [r.chosen for r in pairs]).raw
        rejected = scorer.score_rows(pairs, [r.rejected for r in pairs]).raw
        pref = scalar_metrics(preference_metrics(chosen, rejected, prefix="eval/reward_model"))
    return raw, normalized, pref


def judge_results(rows: list[canonical.EvalExample], responses: dict[str, list[str]]) -> dict[str, list]:
    """The independent judge's verdict (`rlhf.judge.JudgeResult`: score in [0, 1], per-rule scores,
    notes) on each response, against the post the user wrote (the last user turn without the
    instruction) and the row's instruction (its word limit)."""
    from rlhf.judge import judge

    return {name: [judge(canonical.user_input(r), t, r.instruction) for r, t in zip(rows, texts)]
            for name, texts in responses.items()}


# ------------------------------------------------------------------------------------------------


def _settings(config: EvalConfig) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=config.target_sequence_length, batch_size=config.batch_size,
                              do_sample=config.sampling, temperature=config.temperature, top_p=config.top_p,
                              top_k=config.top_k, seed=config.seed)


def bulk_inference(config: EvalConfig, rows: list[canonical.EvalExample]):
    """Responses of the tuned model (KL measured on the way) and of the base, for every row.
    Returns ({"base": [Generation], "tuned": [...]}, KLResult or None, base reference, timings); the
    models are freed when it returns."""
    from rlhf.evaluate import kl as K
    from rlhf.evaluate.policies import load_policy_pair

    pair = load_policy_pair(config.model, config.large_model_reference, device=config.device or None)
    prompts = [models.encode_prompt(pair.tokenizer, canonical.prompt_messages(r),
                                    max_length=config.prompt_sequence_length) for r in rows]
    settings = _settings(config)
    accumulator = K.KLAccumulator()
    t0 = time.perf_counter()
    tuned = generate(pair.tuned, pair.tokenizer, prompts, settings, label="tuned",
                     on_batch=K.measure_on_batches(pair.base, accumulator) if config.measure_kl else None,
                     keep_logits=config.measure_kl)
    t1 = time.perf_counter()
    with pair.base() as base_model:
        base = generate(base_model, pair.tokenizer, prompts, settings, label="base")
    t2 = time.perf_counter()
    timing = {"time/eval_generation_tuned_s": t1 - t0, "time/eval_generation_base_s": t2 - t1}
    kl = accumulator.result() if config.measure_kl else None
    return {"base": base, "tuned": tuned}, kl, pair.base_reference, timing


def _history_source(config: EvalConfig) -> str:
    """The training history to chart: the one given, else a PPO output directory's own metrics.jsonl
    when the model given is that directory."""
    if config.training_history:
        return config.training_history
    candidate = storage.join(config.model, "metrics.jsonl")
    return candidate if storage.exists(candidate) else ""


def _length_metrics(gens: dict[str, list[Generation]]) -> dict[str, float]:
    m = {}
    for name, g in gens.items():
        m[f"eval/length_tokens_{name}_mean"] = M.mean([len(x.response_ids) for x in g])
        m[f"eval/length_words_{name}_mean"] = M.mean([M.word_count(x.text) for x in g])
        m[f"eval/eos_{name}_fraction"] = M.mean([1.0 if x.finished else 0.0 for x in g])
    return m


def _loud(message: str) -> None:
    bar = "!" * 100
    log.warning("\n%s\n%s\n%s", bar, message, bar)


def _reward_metrics(raw: dict[str, list[float]], normalized: dict[str, list[float]]) -> dict[str, float]:
    m = {}
    for name in ("base", "tuned"):
        m[f"eval/reward_{name}_mean"] = M.mean(raw[name])
        m[f"eval/reward_{name}_std"] = M.std(raw[name])
        m[f"eval/reward_{name}_normalized_mean"] = M.mean(normalized[name])
    m["eval/reward_delta"] = m["eval/reward_tuned_mean"] - m["eval/reward_base_mean"]
    m["eval/reward_win_rate"] = M.win_rate(raw["tuned"], raw["base"])
    return m


def _judge_metrics(judged: dict[str, list[float]]) -> dict[str, float]:
    m = {f"eval/judge_{name}_mean": M.mean(judged[name]) for name in ("base", "tuned")}
    m["eval/judge_delta"] = m["eval/judge_tuned_mean"] - m["eval/judge_base_mean"]
    # From the scores, ties half (not `judge.prefer`, which breaks ties by length).
    m["eval/judge_win_rate"] = M.win_rate(judged["tuned"], judged["base"])
    return m


def _rouge(rows, texts) -> tuple[dict[str, float], dict[str, list[Optional[float]]]]:
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


def evaluate(config: EvalConfig, outputs: Optional[EvalOutputs] = None) -> EvalResult:
    """Run the whole evaluation (see module doc). User mistakes raise UserError before any model
    loads; every output is written at the end, so a failed run leaves none."""
    import torch

    if outputs is None:
        config.validate()
        outputs = EvalOutputs.in_dir(config.output_dir)
    else:
        config.validate_inputs()
    rows = load_eval_examples(config.eval_dataset, config.instruction, config.max_examples)
    history_uri = _history_source(config)
    history = read_history(history_uri) if history_uri else []
    if config.reward_model:
        from rlhf.reward.outputs import read_info
        read_info(config.reward_model)  # not a reward model directory: fail before generating
    notes: list[str] = []
    metrics: dict[str, float] = {"eval/num_prompts": float(len(rows))}
    log.info("evaluating %s on %d eval prompts from %s", config.model, len(rows), config.eval_dataset)

    gens, kl, base_reference, timing = bulk_inference(config, rows)
    metrics.update(timing)
    gc.collect()  # the policy is gone: free its memory before the reward model loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    texts = {name: [g.text for g in g_list] for name, g_list in gens.items()}
    metrics.update(_length_metrics(gens))
    if kl is not None:
        metrics.update({"eval/kl": kl.k1_token_mean, "eval/kl_seq": kl.k1_sequence_mean,
                        "eval/kl_full": kl.full_token_mean, "eval/kl_full_seq": kl.full_sequence_mean})
    rouge_metrics, rouge = _rouge(rows, texts)
    metrics.update(rouge_metrics)

    raw: dict[str, list[float]] = {}
    normalized: dict[str, list[float]] = {}
    if config.reward_model:
        t = time.perf_counter()
        raw, normalized, pref = reward_scores(config.reward_model, rows, texts, config)
        metrics["time/eval_reward_s"] = time.perf_counter() - t
        metrics.update(_reward_metrics(raw, normalized))
        metrics.update(pref)
        if not pref:
            notes.append("no eval row carries a chosen/rejected pair: reward-model accuracy not measured")
    else:
        notes.append("no reward model given: reward-model scores and the reward-hacking alarm are skipped")

    verdicts: dict[str, list] = {}
    judged: dict[str, list[float]] = {}
    judge_rules: dict[str, dict[str, float]] = {}
    if config.judge:
        t = time.perf_counter()
        verdicts = judge_results(rows, texts)
        metrics["time/eval_judge_s"] = time.perf_counter() - t
        judged = {name: [v.score for v in vs] for name, vs in verdicts.items()}
        judge_rules = {name: {rule: M.mean([v.rules[rule] for v in vs]) for rule in vs[0].rules}
                       for name, vs in verdicts.items()}
        metrics.update(_judge_metrics(judged))
    else:
        notes.append("the judge was turned off (--no-judge): no judge win rate")

    alarm = None
    if raw and judged:
        alarm = M.reward_hacking_alarm(metrics["eval/reward_base_mean"], metrics["eval/reward_tuned_mean"],
                                       metrics["eval/judge_base_mean"], metrics["eval/judge_tuned_mean"])
        metrics["eval/reward_hacking_alarm"] = 1.0 if alarm else 0.0
        if alarm:
            _loud(alarm)

    # -- outputs ---------------------------------------------------------------------------------
    def score(d, name, i):
        return d[name][i] if d else None

    def notes_of(name, i):
        return verdicts[name][i].notes if verdicts else []

    per_prompt = []
    for i, r in enumerate(rows):
        entry = {"index": i, "source": r.source, "prompt": canonical.prompt_text(r), "reference": r.reference}
        for name in ("base", "tuned"):
            g = gens[name][i]
            entry[name] = {"response": g.text, "tokens": len(g.response_ids), "finished": g.finished,
                           "reward": score(raw, name, i), "reward_normalized": score(normalized, name, i),
                           "judge": score(judged, name, i), "judge_notes": notes_of(name, i),
                           "rouge_l": rouge[name][i]}
        if kl is not None:
            entry["kl_seq"], entry["kl_full_seq"] = kl.k1_per_sequence[i], kl.full_per_sequence[i]
        per_prompt.append(entry)
    samples = [R.Sample(prompt=canonical.prompt_text(r), base=texts["base"][i], tuned=texts["tuned"][i],
                        reference=r.reference or "", judge_base=score(judged, "base", i),
                        judge_tuned=score(judged, "tuned", i), reward_base=score(raw, "base", i),
                        reward_tuned=score(raw, "tuned", i), judge_notes_base=notes_of("base", i),
                        judge_notes_tuned=notes_of("tuned", i))
               for i, r in enumerate(rows[:config.num_report_samples])]
    decoding = (f"sampling (temperature {config.temperature}, top-p {config.top_p}, top-k {config.top_k}, "
                f"seed {config.seed})" if config.sampling else "greedy")
    info = {"Tuned model": config.model, "Base model": base_reference, "Eval data": config.eval_dataset,
            "Reward model": config.reward_model or "(none)", "Training history": history_uri or "(none)",
            "Decoding": f"{decoding}, up to {config.target_sequence_length} new tokens, prompts up to "
                        f"{config.prompt_sequence_length} tokens"}
    if kl is not None:
        info["KL estimator"] = (
            "along the tuned model's responses; eval/kl is the mean log-ratio (k1), "
            + ("an unbiased estimate of KL(tuned || base) because responses are sampled"
               if config.sampling and config.temperature == 1.0 and config.top_p == 1.0 and not config.top_k else
               "here the log-ratio along decoded (not temperature-1 sampled) responses, a proxy for the KL")
            + "; eval/kl_full is the exact KL of the next-token distributions along the same tokens (>= 0)")
    data = R.ReportData(metrics=metrics, info=info, alarm=alarm, reward_scores=raw, judge_scores=judged,
                        judge_rules=judge_rules, history=history, samples=samples, notes=notes)
    summary = R.render_markdown(data)

    for name in ("base", "tuned"):
        write_predictions(storage.join(outputs.predictions_dir, f"{name}.jsonl"), (
            prediction_row(canonical.prompt_text(r), t, r.reference or "") for r, t in zip(rows, texts[name])))
    write_predictions(storage.join(outputs.predictions_dir, "scores.jsonl"), per_prompt)
    storage.write_text(outputs.report_html, R.render_html(data))
    storage.write_text(outputs.summary_md, summary)
    storage.write_json(outputs.metrics_json, R.kfp_metrics(metrics))
    log.info("evaluation written: %s", outputs.report_html)
    return EvalResult(metrics=metrics, summary=summary, alarm=alarm, outputs=outputs, notes=notes)
