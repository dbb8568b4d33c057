"""KFP component: evaluate the tuned policy against its base on the eval prompts (`rlhf.evaluate`)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(
    eval_data: Input[Dataset],
    tuned_policy: Input[Model],
    reward_model: Input[Model],  # trained, or a reference to an existing classifier (rlhf.reward.existing)
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    predictions: Output[Dataset],
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    batch_size: int,
    max_examples: int,
    seed: int,
    eval_classifiers: list,
    training_logs: Optional[Input[Artifact]] = None,  # an artifact that may be absent, not a setting
    instruction: Optional[str] = None,  # None: Google's "not given"
):
    """Bulk inference of base and tuned on the eval data (predictions in Google's bulk-inferrer rows),
    reward-model and independent-judge scores, KL(tuned || base), ROUGE-L; a self-contained HTML
    report, a Markdown summary and `eval/...` metrics. Warns loudly on signs of reward hacking.
    `training_logs`: the PPO metrics.jsonl or TensorBoard logs, for the curves. Other settings take
    `EvalConfig`'s defaults (`rlhf evaluate` sets them all)."""
    from rlhf import launch, storage
    from rlhf.evaluate.run import EvalOutputs, evaluate
    from rlhf.pipeline_settings import EVALUATION
    from rlhf.reward.existing import reward_settings

    config = EVALUATION.build({
        **EVALUATION.settings_of(locals()), "eval_dataset": eval_data.path, "model": tuned_policy.path,
        **reward_settings(reward_model.path),
        "training_history": training_logs.path if training_logs is not None else ""})
    result = launch.run(evaluate, config, EvalOutputs(  # one process per GPU the task was given
        predictions_dir=predictions.path, report_html=report.path, summary_md=summary.path,
        metrics_json=metrics.path))
    for name, value in storage.read_json(metrics.path).items():
        metrics.log_metric(name, value)
    print(result.summary)
