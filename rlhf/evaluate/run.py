"""The evaluation step: base vs tuned on the eval prompts, end to end.

    examples -> bulk inference (tuned, with KL measured on the way; then base)     (here)
             -> reward-model scores, judge scores                                   (here)
             -> metrics, ROUGE-L, lengths, alarm, per-prompt rows: `Results`        (results.py)
             -> report.html, summary.md, metrics.json                               (report.py)
             -> predictions JSONL, scores.jsonl                                     (here)

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

from rlhf import encoding, storage
from rlhf.data import canonical
from rlhf.errors import UserError
from rlhf.evaluate import report as R
from rlhf.evaluate.config import EvalConfig
from rlhf.evaluate.data import load_eval_examples
from rlhf.evaluate.history import read_history
from rlhf.evaluate.inference import GenerationSettings, generate, prediction_row, write_predictions
from rlhf.evaluate.results import RewardScores, compute_results, describe_run

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
                  config: EvalConfig) -> RewardScores:
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
    return RewardScores(raw=raw, normalized=normalized, preference=pref)


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
    prompts = [encoding.encode_prompt(pair.tokenizer, canonical.prompt_messages(r),
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


def _loud(message: str) -> None:
    bar = "!" * 100
    log.warning("\n%s\n%s\n%s", bar, message, bar)


def evaluate(config: EvalConfig, outputs: Optional[EvalOutputs] = None) -> EvalResult:
    """Run the whole evaluation (see module doc). User mistakes raise UserError before any model
    loads; every output is written at the end, so a failed run leaves none."""
    import torch

    config.validate()
    if outputs is None:
        if not config.output_dir:
            raise UserError("--output-dir is required: where predictions, metrics and the report go")
        outputs = EvalOutputs.in_dir(config.output_dir)
    rows = load_eval_examples(config.eval_dataset, config.instruction, config.max_examples)
    history_uri = _history_source(config)
    history = read_history(history_uri) if history_uri else []
    if config.reward_model:
        from rlhf.reward.outputs import read_info
        read_info(config.reward_model)  # not a reward model directory: fail before generating
    log.info("evaluating %s on %d eval prompts from %s", config.model, len(rows), config.eval_dataset)

    gens, kl, base_reference, timing = bulk_inference(config, rows)
    gc.collect()  # the policy is gone: free its memory before the reward model loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    texts = {name: [g.text for g in g_list] for name, g_list in gens.items()}
    reward = verdicts = None
    if config.reward_model:
        t = time.perf_counter()
        reward = reward_scores(config.reward_model, rows, texts, config)
        timing["time/eval_reward_s"] = time.perf_counter() - t
    if config.judge:
        t = time.perf_counter()
        verdicts = judge_results(rows, texts)
        timing["time/eval_judge_s"] = time.perf_counter() - t

    results = compute_results(rows, gens, kl=kl, reward=reward, verdicts=verdicts, timing=timing,
                              info=describe_run(config, base_reference, history_uri, kl is not None),
                              history=history, num_samples=config.num_report_samples)
    if results.alarm:
        _loud(results.alarm)
    summary = R.render_markdown(results)

    for name in ("base", "tuned"):
        write_predictions(storage.join(outputs.predictions_dir, f"{name}.jsonl"), (
            prediction_row(canonical.prompt_text(r), t, r.reference or "") for r, t in zip(rows, texts[name])))
    write_predictions(storage.join(outputs.predictions_dir, "scores.jsonl"), results.per_prompt)
    storage.write_text(outputs.report_html, R.render_html(results))
    storage.write_text(outputs.summary_md, summary)
    storage.write_json(outputs.metrics_json, R.kfp_metrics(results.metrics))
    log.info("evaluation written: %s", outputs.report_html)
    return EvalResult(metrics=results.metrics, summary=summary, alarm=results.alarm, outputs=outputs,
                      notes=results.notes)
