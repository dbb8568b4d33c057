"""The evaluation step: base vs tuned on the eval prompts, end to end.

    examples -> bulk inference (tuned, with KL measured on the way; then base)     (here)
             -> reward-model scores, judge scores                                   (here)
             -> metrics, ROUGE-L, lengths, alarm, per-prompt rows: `Results`        (results.py)
             -> report.html, summary.md, metrics.json                               (report.py)
             -> predictions JSONL, scores.jsonl                                     (here)

Outputs (`EvalOutputs.in_dir(output_dir)`):
    predictions/base.jsonl, predictions/tuned.jsonl   Google bulk-inferrer rows
    predictions/sft.jsonl                             the same, when an SFT model is compared
    predictions/scores.jsonl                          per prompt: every response and every score
    report.html, summary.md, metrics.json

When the tuned policy's base is an SFT model (``rlhf.evaluate.lineage``: its directory records the
model it was fine-tuned from), three models answer the same prompts with the same decoding and seed:
the original base ("base"), the SFT model ("sft", the tuned policy's KL reference) and the tuned
policy; metrics and win rates come for each (``results.sft_comparisons``).

On several devices (``--devices``, ``rlhf.launch``) every process loads the models and takes its
share of the prompts: whole generation batches, dealt in turn (the batches one process would form,
so greedy predictions are the same), then contiguous shares for the reward model and the judge;
the results are gathered back in the prompts' order and rank 0 alone computes and writes the outputs.
A base that does not fit one device (the memory plan, or ``--shard-base``) is sharded over the processes
(``PolicyPair.shard``, FSDP2): every process then decodes as many batches as the busiest (stand-ins
after its own) in step with the others (``inference.generate``'s ``rounds``), so the predictions are
still those of one process. The reward model and judge are not sharded.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

from rlhf import distributed, encoding, storage
from rlhf.data import canonical
from rlhf.errors import UserError
from rlhf.evaluate import report as R
from rlhf.evaluate.config import EvalConfig
from rlhf.evaluate.data import load_eval_examples
from rlhf.evaluate.history import read_history
from rlhf.evaluate.inference import GenerationSettings, generate, prediction_row, write_predictions
from rlhf.evaluate.lineage import find_lineage
from rlhf.evaluate.policies import choose_base_reference, find_adapter_dir
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


def _on_shards(n: int, compute) -> list:
    """``compute(indices)`` (one value per index) on this process's contiguous share of ``range(n)``;
    every value, in index order, on every process."""
    start, end = distributed.shard_bounds(n) if distributed.active() else (0, n)
    mine = list(range(start, end))
    return distributed.gather_in_order(zip(mine, compute(mine) if mine else []), n)


def reward_scores(reward_model: str, rows: list[canonical.EvalExample], responses: dict[str, list[str]],
                  config: EvalConfig, device=None) -> RewardScores:
    """Raw and normalized reward-model scores of each group of responses ({"base": [...], "tuned": [...]}),
    and the reward model's preference metrics on the rows that carry a chosen/rejected pair."""
    from rlhf.reward.metrics import preference_metrics, scalar_metrics
    from rlhf.reward.scorer import load_scorer

    # A trained reward model (pairwise or classifier) or an existing Hugging Face classifier.
    scorer = load_scorer(reward_model, config.positive_label, device=device or config.device or None,
                         dtype=config.dtype, batch_size=config.batch_size)

    def score(subset: list, texts: list[str]) -> list[tuple]:  # (raw, normalized, P(class) or None), in order
        def compute(indices):
            # Rows keep their own instruction; one without gets the reward model's training instruction.
            got = scorer.score_rows([subset[i] for i in indices], [texts[i] for i in indices])
            probability = [None] * len(indices) if got.probability is None else [float(p) for p in got.probability]
            return [(float(a), float(b), p) for a, b, p in zip(got.raw, got.normalized, probability)]
        return _on_shards(len(subset), compute)

    raw, normalized, probabilities = {}, {}, {}
    for name, texts in responses.items():
        scores = score(rows, texts)
        raw[name], normalized[name] = [s[0] for s in scores], [s[1] for s in scores]
        if scores and scores[0][2] is not None:  # a classifier: its probability of the reward class too
            probabilities[name] = [s[2] for s in scores]
    label = scorer.labels[scorer.positive] if probabilities else ""
    pairs = [r for r in rows if r.chosen is not None and r.rejected is not None]
    pref: dict[str, float] = {}
    if pairs:
        chosen = [s[0] for s in score(pairs, [r.chosen for r in pairs])]
        rejected = [s[0] for s in score(pairs, [r.rejected for r in pairs])]
        pref = scalar_metrics(preference_metrics(chosen, rejected, prefix="eval/reward_model"))
    return RewardScores(raw=raw, normalized=normalized, preference=pref, probabilities=probabilities, label=label)


def judge_results(rows: list[canonical.EvalExample], responses: dict[str, list[str]]) -> dict[str, list]:
    """The independent judge's verdict (`rlhf.judge.JudgeResult`: score in [0, 1], per-rule scores,
    notes) on each response, against the post the user wrote (the last user turn without the
    instruction) and the row's instruction (its word limit)."""
    from rlhf.judge import judge

    return {name: _on_shards(len(rows), lambda indices, texts=texts: [
        judge(canonical.user_input(rows[i]), texts[i], rows[i].instruction) for i in indices])
        for name, texts in responses.items()}


# ------------------------------------------------------------------------------------------------


def _settings(config: EvalConfig) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=config.target_sequence_length, batch_size=config.batch_size,
                              do_sample=config.sampling, temperature=config.temperature, top_p=config.top_p,
                              top_k=config.top_k, seed=config.seed)


def generation_share(prompts: list[list[int]], batch_size: int) -> list[int]:
    """This process's prompts (indices): the generation batches one process would form (longest
    prompts first, as ``inference.generate`` orders them), dealt to the processes in turn, so each
    batch, and so each greedy response, is the one a single process computes."""
    if not distributed.active():
        return list(range(len(prompts)))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    return [i for batch in batches[distributed.rank()::distributed.world_size()] for i in batch]


def bulk_inference(config: EvalConfig, rows: list[canonical.EvalExample], device=None, base_ref: str = "",
                   lineage=None):
    """Responses of the tuned model (KL measured on the way) and of the base, for every row (on
    several processes: each generates its share, ``generation_share``, and all get every response).
    Returns ({"base": [Generation], "tuned": [...]}, KLResult or None, base reference, timings); the
    models are freed when it returns. ``base_ref``: the base when already chosen (else
    ``config.large_model_reference``, else the adapter's). With ``lineage``
    (`rlhf.evaluate.lineage.SFTLineage`) the base is the SFT model, "sft", and the original base is
    loaded once the pair is freed and generates "base": {"base", "sft", "tuned"}."""
    from rlhf.evaluate import kl as K
    from rlhf.evaluate.policies import load_original_base, load_policy_pair

    plan = None
    if config.large_model_reference:  # refuse a base that cannot fit before loading it (CUDA only)
        from rlhf import memory_plan, models
        plan = memory_plan.check_device(
            "evaluation", config.large_model_reference, memory_plan.Workload.from_configs(evaluation=config),
            models.pick_device(device) if device is None or isinstance(device, str) else device,
            distributed.world_size(), can_shard=True)
    wants_shard = config.shard_base or bool(plan and plan.strategy == "sharded")
    if lineage is not None and wants_shard and distributed.active():
        # Three sharded models would need the lockstep rounds for the original base too: untested, so refused.
        raise UserError(f"the base {lineage.sft_model} is an SFT model, and comparing it with its original base "
                        f"{lineage.original_base} is not supported with a sharded base (--shard-base, or a base "
                        f"too large for one device): pass --no-sft-comparison to compare tuned with the SFT "
                        f"model only, or run on devices that hold the base whole")
    pair = load_policy_pair(config.model, base_ref or config.large_model_reference,
                            device=device or config.device or None, dtype=config.dtype)
    if wants_shard and pair.shard(device):
        log.info("models sharded over %d processes (FSDP2)", distributed.world_size())
    prompts = [encoding.encode_prompt(pair.tokenizer, canonical.prompt_messages(r),
                                    max_length=config.prompt_sequence_length) for r in rows]
    settings = _settings(config)
    mine = generation_share(prompts, settings.batch_size)
    # Sharded: every process runs as many batches as the busiest (stand-ins of the first prompt).
    batches = math.ceil(len(prompts) / settings.batch_size)
    lockstep = (dict(rounds=math.ceil(batches / distributed.world_size()), standin=prompts[0])
                if pair.sharded and prompts else {})
    if distributed.active() and settings.do_sample:  # a distinct sampling stream on each process
        settings = dataclasses.replace(settings, seed=settings.seed + 1_000_003 * distributed.rank())
    accumulator = K.KLAccumulator()
    measure = K.measure_on_batches(pair.base, accumulator) if config.measure_kl else None
    on_batch = (lambda b: measure(dataclasses.replace(b, indices=[mine[i] for i in b.indices]))) if measure else None
    t0 = time.perf_counter()
    tuned = generate(pair.tuned, pair.tokenizer, [prompts[i] for i in mine], settings, label="tuned",
                     on_batch=on_batch, keep_logits=config.measure_kl, **lockstep)
    t1 = time.perf_counter()
    base_name = "base" if lineage is None else "sft"  # the pair's base is the SFT model when there is one
    with pair.base() as base_model:
        base = generate(base_model, pair.tokenizer, [prompts[i] for i in mine], settings, label=base_name,
                        **lockstep)
    t2 = time.perf_counter()
    timing = {"time/eval_generation_tuned_s": t1 - t0, f"time/eval_generation_{base_name}_s": t2 - t1}
    if distributed.active():  # every process's responses, in the prompts' order; the KL of all
        tuned = distributed.gather_in_order(zip(mine, tuned), len(prompts))
        base = distributed.gather_in_order(zip(mine, base), len(prompts))
        for other in distributed.gather(accumulator):  # by example index: its own share again is a no-op
            accumulator.merge(other)
    kl = accumulator.result() if config.measure_kl else None
    if lineage is None:
        return {"base": base, "tuned": tuned}, kl, pair.base_reference, timing

    # The original base, loaded only now and alone: the pair (and the KL hook holding it) is freed first.
    tokenizer, base_reference = pair.tokenizer, pair.base_reference
    vocab = pair.tuned.get_input_embeddings().weight.shape[0]
    pair = measure = on_batch = base_model = None
    gc.collect()
    original = load_original_base(lineage.original_base, lineage.sft_model, vocab,
                                  device=device or config.device or None, dtype=config.dtype)
    t3 = time.perf_counter()
    first = generate(original, tokenizer, [prompts[i] for i in mine], settings, label="base")
    timing["time/eval_generation_base_s"] = time.perf_counter() - t3
    if distributed.active():
        first = distributed.gather_in_order(zip(mine, first), len(prompts))
    return {"base": first, "sft": base, "tuned": tuned}, kl, base_reference, timing


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


def evaluate(config: EvalConfig, outputs: Optional[EvalOutputs] = None) -> Optional[EvalResult]:
    """Run the whole evaluation (see module doc). User mistakes raise UserError before any model
    loads; every output is written at the end, so a failed run leaves none. On several processes
    rank 0 returns the result and the others None."""
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
    base_ref = choose_base_reference(config.model, config.large_model_reference, find_adapter_dir(config.model))
    lineage, lineage_note = find_lineage(config, base_ref)  # the base is an SFT model: compare three
    _, world, device = distributed.init(config.device or None)  # several processes: one GPU each
    log.info("evaluating %s on %d eval prompts from %s; world size %d", config.model, len(rows),
             config.eval_dataset, world)
    if lineage is not None:
        log.info("the base %s is an SFT model of %s: evaluating base, SFT and tuned", lineage.sft_model,
                 lineage.original_base)

    gens, kl, base_reference, timing = bulk_inference(config, rows, device, base_ref, lineage)
    gc.collect()  # the policy is gone: free its memory before the reward model loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    texts = {name: [g.text for g in g_list] for name, g_list in gens.items()}
    reward = verdicts = None
    if config.reward_model:
        t = time.perf_counter()
        reward = reward_scores(config.reward_model, rows, texts, config, device)
        timing["time/eval_reward_s"] = time.perf_counter() - t
    if config.judge:
        t = time.perf_counter()
        verdicts = judge_results(rows, texts)
        timing["time/eval_judge_s"] = time.perf_counter() - t
    classifiers = None
    if config.eval_classifiers:  # P(label) of each response by each classifier (rlhf.evaluate.classifiers)
        from rlhf.evaluate.classifiers import score_all
        classifiers = score_all(config.eval_classifiers, rows, texts, device=device, dtype=config.dtype,
                                batch_size=config.batch_size)
    if reward is not None and reward.probabilities:  # a classifier reward's P(class), reported as a classifier's
        from rlhf.evaluate.classifiers import Classifier
        classifiers = {Classifier(config.reward_model, reward.label).name: reward.probabilities, **(classifiers or {})}
    timing = distributed.reduce_metrics(timing)  # the slowest process's times
    if not distributed.is_main():  # rank 0 computes and writes the outputs
        distributed.shutdown()
        return None

    results = compute_results(rows, gens, kl=kl, reward=reward, verdicts=verdicts, timing=timing,
                              info=describe_run(config, base_reference, history_uri, kl is not None, lineage),
                              history=history, num_samples=config.num_report_samples, classifiers=classifiers)
    if lineage_note:
        results.notes.append(lineage_note)
    if results.alarm:
        _loud(results.alarm)
    summary = R.render_markdown(results)

    for name in gens:  # base.jsonl, sft.jsonl (an SFT model compared), tuned.jsonl
        write_predictions(storage.join(outputs.predictions_dir, f"{name}.jsonl"), (
            prediction_row(canonical.prompt_text(r), t, r.reference or "") for r, t in zip(rows, texts[name])))
    write_predictions(storage.join(outputs.predictions_dir, "scores.jsonl"), results.per_prompt)
    storage.write_text(outputs.report_html, R.render_html(results))
    storage.write_text(outputs.summary_md, summary)
    storage.write_json(outputs.metrics_json, R.kfp_metrics(results.metrics))
    log.info("evaluation written: %s", outputs.report_html)
    distributed.shutdown()
    return EvalResult(metrics=results.metrics, summary=summary, alarm=results.alarm, outputs=outputs,
                      notes=results.notes)
