"""KFP component: validate the datasets before any accelerator is paid for (`rlhf.data.validate`)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(
    preference_dataset: str,
    preference_data: Output[Dataset],
    prompt_data: Output[Dataset],
    eval_data: Output[Dataset],
    labeled_data: Output[Dataset],  # written only when labeled_dataset is given
    sft_data: Output[Dataset],  # written only when sft_dataset is given
    stats: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
    summary_html: Output[HTML],
    prompt_dataset: str,
    tokenizer: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    accelerator_type: str,
    eval_dataset: Optional[str] = None,  # None: Google's "not given"
    labeled_dataset: Optional[str] = None,  # a classifier reward model's data; None or "": not given
    sft_dataset: Optional[str] = None,  # supervised fine-tuning's demonstrations; None or "": not given
    instruction: Optional[str] = None,
    labeled_preferences: Input[Dataset] = None,  # AI-feedback labels (components.label)
    use_labeled_preferences: Optional[bool] = None,  # True: read those instead of preference_dataset
):
    """Check every line of the datasets; write them in the canonical format (an empty file for a
    dataset not given), the stats JSON, a Markdown/HTML summary and metrics. Invalid data fails the
    task with each problem as `URI:LINE: message` in the log. An `accelerator_type` the trainers
    cannot run on fails it too, before any accelerator is paid for."""
    from rlhf import storage
    from rlhf.data.validate import ValidationOutputs, run_validation
    from rlhf.errors import UserError
    from rlhf.pipeline_settings import VALIDATION, accelerator_type_problem

    problem = accelerator_type_problem(accelerator_type)
    if problem:
        raise UserError(f"accelerator_type {accelerator_type!r}: {problem}")
    if use_labeled_preferences:
        preference_dataset = labeled_preferences.path
    config = VALIDATION.build(VALIDATION.settings_of(locals()))
    report = run_validation(config, ValidationOutputs(
        preference=preference_data.path, prompts=prompt_data.path, eval=eval_data.path,
        labeled=labeled_data.path, sft=sft_data.path,
        stats=stats.path, summary_md=summary.path, summary_html=summary_html.path))
    print("\n".join(report.warnings.lines()))
    if not report.ok:
        raise UserError(report.problem_text())
    for name, value in report.metrics.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, report.metrics)  # a file at .path keeps KFP's cache working
