"""The pipeline's first task, as plain Python: check every parameter value, then every dataset line.

A run started from the Vertex AI console or the Kubeflow UI never passes through `rlhf submit`, so
the pipeline checks its own values here, with the validators `rlhf submit` uses
(`rlhf.parameters.value_problems`), before any accelerator is provisioned. Its answers about the
graph's choices (is there an eval dataset, does a training stage run as a multi-node job) are
returned for the graph's conditions, so the graph branches on checked values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from rlhf.data.validate import ValidationOutputs, run_validation
from rlhf.errors import UserError
from rlhf.parameters import value_problems
from rlhf.pipeline_settings import VALIDATION, accelerator_type_problem, existing_reward_model


@dataclass(frozen=True)
class Decisions:
    """What the graph's conditions read, from checked values."""
    has_eval_dataset: bool
    reward_model_as_job: bool
    tuning_as_job: bool


def _as_job(values: Mapping[str, Any], prefix: str) -> bool:
    # A named machine type or several machines: a pipeline task cannot choose its machine.
    return (values.get(f"{prefix}_replica_count") or 1) > 1 or bool(str(values.get(f"{prefix}_machine_type") or "").strip())


def check_values(values: Mapping[str, Any], target: str, launches_jobs: bool) -> Decisions:
    """Raise one UserError naming every bad parameter and what is allowed; else the decisions."""
    problems = [message for _, message in value_problems(values, target=target, launches_jobs=launches_jobs)]
    if not problems and existing_reward_model(values):
        from rlhf.reward.existing import check_classifier
        try:
            check_classifier(values["reward_model"], str(values.get("positive_label") or ""))
        except UserError as e:
            problems.append(f"parameter 'reward_model': {e}")
    if problems:
        raise UserError(f"{len(problems)} problem(s) with the pipeline's parameter values; nothing was trained:\n"
                        + "\n".join(f"  {p}" for p in problems))
    return Decisions(has_eval_dataset=bool(str(values.get("eval_dataset") or "").strip()),
                     reward_model_as_job=launches_jobs and _as_job(values, "reward_model"),
                     tuning_as_job=launches_jobs and _as_job(values, "reinforcement_learning"))


def validate_inputs(values: Mapping[str, Any], outputs: ValidationOutputs, target: str,
                    launches_jobs: bool) -> tuple[Decisions, dict[str, float]]:
    """Check the parameters, then validate the datasets into `outputs` (canonical JSONL, stats,
    summaries); returns the decisions and the validation metrics. A bad value or dataset line raises
    a UserError (`URI:LINE: message` for data)."""
    problem = accelerator_type_problem(values.get("accelerator_type") or "GPU")
    if problem:  # before anything else: the one value that says the run cannot happen here at all
        raise UserError(f"parameter 'accelerator_type' {values.get('accelerator_type')!r}: {problem}")
    decisions = check_values(values, target, launches_jobs)
    config = VALIDATION.build(VALIDATION.fields_from(values))
    report = run_validation(config, outputs)
    print("\n".join(report.warnings.lines()))
    if not report.ok:
        raise UserError(report.problem_text())
    return decisions, report.metrics
