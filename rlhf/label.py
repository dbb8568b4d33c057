"""AI feedback: sample K candidates per prompt from a model and rank them with a judge, writing
ranked preference rows (`input_text`/`messages`, `candidates`, `ranking`) that `rlhf validate` and the
reward model read (each ranking becomes every pairwise comparison).

As in RLAIF (Lee et al., 2023, arXiv:2309.00267): preferences from a judge that follows written
principles instead of human raters. The default judge is the bundled constitution (`rlhf.judge`),
the one that labelled the bundled sample pairs; `--judge module:function` plugs in any other, e.g. a
call to an LLM endpoint.

A judge is a callable `judge(prompt, candidates)` -> one score per candidate (higher is better), or
`{"ranking": [...]}` (candidate indices, best first). `prompt` is the row's last user turn without the
instruction; a judge that takes an `instruction` keyword gets the row's instruction too (the bundled
judge reads its word limit from it).

Duplicates and ties: candidates identical after stripping whitespace, and empty ones, are dropped
before judging (a ranking between identical texts teaches nothing, and the validator refuses them);
candidates that tie on the judge's score keep only the shorter (then alphabetically first; as
`rlhf.judge.prefer` breaks ties), since a pair between equals teaches the reward model noise (the
bundled sample data drops ties too). A prompt left with fewer than 2 candidates is skipped; every
drop is counted in the printed stats.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from rlhf import settings, storage
from rlhf.data import canonical
from rlhf.data.validate import ValidateConfig, ValidationOutputs, run_validation
from rlhf.errors import UserError
from rlhf.settings import Settings, at_least, given, positive, setting, within

log = logging.getLogger(__name__)

Judge = Callable[..., object]


def _judge_spec(value) -> Optional[str]:
    if not value:
        return None
    module, sep, name = value.partition(":")
    return None if sep and module and name else "expected module:function, e.g. my_judges:vertex_judge"


@dataclass
class LabelConfig(Settings):
    """`rlhf label`: AI-labelled preference data from a prompt dataset."""

    STEP = "label"

    prompt_dataset: str = setting("", "prompts to label (JSONL: input_text, prompt or chat messages): a local "
                                      "path, gs:// URI or glob", given("the prompt JSONL"))
    output: str = setting("", "where to write the ranked preference JSONL (local path or gs:// URI)",
                          given("the output JSONL path"))
    large_model_reference: str = setting("", "the model that writes the candidates: the base or an SFT model "
                                             "(alias, directory, gs:// URI); empty: smollm2-135m-instruct")
    candidates: int = setting(4, "candidates sampled per prompt (K); each prompt gives up to K*(K-1)/2 pairs",
                              at_least(2))
    max_prompts: int = setting(0, "label the first N prompts only; 0 for all", settings.non_negative)
    judge: str = setting("", "the judge as module:function (a callable taking a prompt and its candidates, "
                             "returning one score per candidate or {\"ranking\": [...]}); empty: the bundled "
                             "constitution judge (rlhf.judge)", _judge_spec)
    temperature: float = setting(1.0, "sampling temperature of the candidates", within(0, 100, low_open=True))
    top_p: float = setting(0.95, "nucleus sampling of the candidates", within(0, 1, low_open=True))
    batch_size: int = setting(16, "sequences generated per batch (prompts x candidates)", positive)
    instruction: str = settings.instruction()
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    seed: int = settings.seed()
    device: str = settings.device()
    dtype: str = settings.dtype()
    progress: bool = setting(True, "show a progress bar on stderr")


@dataclass
class LabelStats:
    prompts: int = 0
    rows: int = 0
    pairs: int = 0
    skipped: dict = field(default_factory=lambda: {"fewer_than_2_distinct": 0, "all_tied": 0})
    dropped_candidates: dict = field(default_factory=lambda: {"empty": 0, "duplicate": 0, "tie": 0})
    mean_best_score: Optional[float] = None  # with scores (not a ranking) from the judge

    def to_dict(self) -> dict:
        return dict(vars(self))


# -- judges ----------------------------------------------------------------------------------------

def constitution_judge(prompt: str, candidates: Sequence[str], instruction: Optional[str] = None) -> list[float]:
    """The bundled judge: each candidate's constitution score (`rlhf.judge.judge`)."""
    from rlhf import judge as J
    return [J.judge(prompt, c, instruction).score for c in candidates]


def load_judge(spec: str) -> Judge:
    """The callable `module:function` names (the bundled judge when empty), or a UserError saying why not."""
    if not spec:
        return constitution_judge
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise UserError(f"--judge {spec!r}: expected module:function, e.g. my_judges:vertex_judge")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UserError(f"--judge {spec}: no module named {module_name!r}; put it on PYTHONPATH or "
                            f"install its package") from None
        raise UserError(f"--judge {spec}: importing {module_name!r} failed: it needs {e.name!r}, which "
                        f"is not installed") from None
    fn = module
    for part in name.split("."):
        if not hasattr(fn, part):
            raise UserError(f"--judge {spec}: module {module_name!r} has no attribute {name!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UserError(f"--judge {spec}: {name!r} is a {type(fn).__name__}, not a callable")
    return fn


def _takes_instruction(fn: Judge) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "instruction" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def ranking_from(verdict: object, candidates: Sequence[str], where: str) -> tuple[list[int], Optional[list[float]]]:
    """(ranking best first, scores or None) from a judge's verdict: scores (one finite number per
    candidate; ties broken by length, then text) or `{"ranking": [...]}`. A wrong shape is a UserError
    naming `where` (the prompt's file:line)."""
    n = len(candidates)
    if isinstance(verdict, dict) and "ranking" in verdict:
        ranking = verdict["ranking"]
        ok = (isinstance(ranking, (list, tuple)) and all(isinstance(r, int) and not isinstance(r, bool)
                                                          for r in ranking)
              and sorted(ranking) == list(range(n)))
        if not ok:
            raise UserError(f"{where}: the judge's ranking {ranking!r} is not a permutation of the {n} "
                            f"candidate indices 0..{n - 1} (best first)")
        return list(ranking), None
    scores = verdict.tolist() if hasattr(verdict, "tolist") else verdict
    ok = (isinstance(scores, (list, tuple)) and len(scores) == n
          and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores))
    if not ok:
        shown = repr(verdict) if len(repr(verdict)) <= 80 else repr(verdict)[:77] + "..."
        raise UserError(f"{where}: the judge returned {shown}; expected a list of {n} finite scores (one "
                        f"per candidate, higher is better) or {{\"ranking\": [indices, best first]}}")
    scores = [float(s) for s in scores]
    ranking = sorted(range(n), key=lambda i: (-scores[i], len(candidates[i].split()), candidates[i]))
    return ranking, scores


def distinct(texts: Sequence[str], stats: Optional[LabelStats] = None) -> list[str]:
    """The non-empty texts, stripped, each once, in first-seen order."""
    out, seen = [], set()
    for t in texts:
        t = t.strip()
        if not t:
            if stats:
                stats.dropped_candidates["empty"] += 1
        elif t in seen:
            if stats:
                stats.dropped_candidates["duplicate"] += 1
        else:
            seen.add(t)
            out.append(t)
    return out


def without_ties(candidates: list[str], ranking: list[int], scores: list[float],
                 stats: Optional[LabelStats] = None) -> tuple[list[str], list[int]]:
    """The candidates (in their order) and ranking without those that tie with a better-ranked one."""
    kept: list[int] = []
    for i in ranking:  # best first, so equal scores are adjacent
        if kept and scores[i] == scores[kept[-1]]:
            if stats:
                stats.dropped_candidates["tie"] += 1
        else:
            kept.append(i)
    order = sorted(kept)
    return [candidates[i] for i in order], [order.index(i) for i in kept]


def ranked_row(row: canonical.Prompt, candidates: list[str], ranking: list[int]) -> dict:
    """A ranked preference row in the user format: `input_text` for a one-turn prompt, else chat
    `messages`; with the prompt's instruction, so the file means the same whatever instruction a later
    step is given."""
    if len(row.messages) == 1:
        out: dict = {"input_text": row.messages[0]["content"]}
    else:
        out = {"messages": [{"author": m["role"], "content": m["content"]} for m in row.messages]}
    out.update(candidates=candidates, ranking=ranking)
    if row.instruction:
        out["instruction"] = row.instruction
    return out


# -- the step ----------------------------------------------------------------------------------------

def label(config: LabelConfig, judge: Optional[Judge] = None, model=None, tokenizer=None) -> LabelStats:
    """Sample, judge and write `config.output` atomically; returns what was labelled and dropped.
    `judge`, `model` and `tokenizer` default to those the config names (tests pass their own)."""
    config.validate()
    from rlhf.data.rows import load_rows

    judge = judge or load_judge(config.judge)
    rows = load_rows(config.prompt_dataset, "prompt", config.instruction, config.max_prompts)
    if not rows:
        raise UserError(f"--prompt-dataset {config.prompt_dataset}: no prompts to label")
    if model is None or tokenizer is None:
        from rlhf import models
        tokenizer = models.load_tokenizer(config.large_model_reference or None, padding_side="left")
        model = models.load_causal_lm(config.large_model_reference or None, dtype=config.dtype,
                                      device=config.device or None)
    with_instruction = _takes_instruction(judge)
    stats = LabelStats(prompts=len(rows))
    best: list[float] = []
    # Prompts per generate() call, so that a batch holds all K candidates of each of its prompts.
    chunk = max(1, config.batch_size // config.candidates)
    with storage.open_write(config.output, "wt") as out, _progress(len(rows), config.progress) as bar:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            texts = _sample(model, tokenizer, part, config, seed=config.seed + start)
            for row, samples in zip(part, texts):
                candidates = distinct(samples, stats)
                if len(candidates) < 2:
                    stats.skipped["fewer_than_2_distinct"] += 1
                    continue
                prompt = canonical.user_input(row)
                try:
                    verdict = (judge(prompt, candidates, instruction=row.instruction) if with_instruction
                               else judge(prompt, candidates))
                except UserError:
                    raise
                except Exception as e:  # a user's judge: say which prompt, keep its own message
                    raise UserError(f"{row.source}: the judge {config.judge or 'constitution_judge'} "
                                    f"failed: {type(e).__name__}: {e}") from e
                ranking, scores = ranking_from(verdict, candidates, row.source)
                if scores:
                    best.append(scores[ranking[0]])
                    candidates, ranking = without_ties(candidates, ranking, scores, stats)
                    if len(candidates) < 2:
                        stats.skipped["all_tied"] += 1
                        continue
                out.write(json.dumps(ranked_row(row, candidates, ranking),
                                     ensure_ascii=False) + "\n")
                stats.rows += 1
                stats.pairs += len(candidates) * (len(candidates) - 1) // 2
            bar.update(len(part))
    if best:
        stats.mean_best_score = round(sum(best) / len(best), 6)
    if not stats.rows:
        log.warning("no prompt kept 2 candidates that differ in text and score (see the skipped counts): "
                    "%s is empty", config.output)
    return stats


def _sample(model, tokenizer, rows, config: LabelConfig, seed: int) -> list[list[str]]:
    """K sampled responses for each row, in order."""
    from rlhf import encoding
    from rlhf.evaluate.inference import GenerationSettings, generate

    prompts = [encoding.encode_prompt(tokenizer, canonical.prompt_messages(r),
                                      max_length=config.prompt_sequence_length) for r in rows]
    k = config.candidates
    repeated = [p for p in prompts for _ in range(k)]
    gen = GenerationSettings(max_new_tokens=config.target_sequence_length, batch_size=config.batch_size,
                             do_sample=True, temperature=config.temperature, top_p=config.top_p, seed=seed)
    results = generate(model, tokenizer, repeated, gen, label="label")
    return [[g.text for g in results[i * k:(i + 1) * k]] for i in range(len(rows))]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(total: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm  # comes with transformers (huggingface_hub)
    return tqdm(total=total, desc="labelling prompts", unit="prompt", file=sys.stderr)


def label_or_hand_on(validated_preferences: str, preference_data: str, ranked: str, ai_feedback: bool,
                     config: LabelConfig) -> bool:
    """The pipeline's labels stage: with `ai_feedback` and no validated preference pairs, label the
    prompts into `ranked` (ranked candidates) and write their pairs, validated and canonical, to
    `preference_data` (True); otherwise copy the validated pairs there unchanged and leave `ranked`
    empty (False)."""
    if not ai_feedback or storage.read_text(validated_preferences).strip():
        storage.write_text(ranked, "")
        storage.write_text(preference_data, storage.read_text(validated_preferences))
        return False
    stats = label(dataclasses.replace(config, output=ranked))
    print(stats.to_dict())
    if not stats.rows:
        raise UserError(f"AI feedback labelled none of {stats.prompts} prompts (candidates identical, empty "
                        f"or tied on the judge's score: {stats.to_dict()}); sample more candidates or at a "
                        f"higher temperature with ai_feedback_options, or give a preference_dataset")
    with tempfile.TemporaryDirectory() as scratch:
        outputs = ValidationOutputs.in_dir(scratch)
        report = run_validation(ValidateConfig(preference_dataset=ranked), outputs)
        if not report.ok:
            raise UserError(report.problem_text())
        storage.write_text(preference_data, storage.read_text(outputs.preference))
    return True
