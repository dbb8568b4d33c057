"""KFP component: evaluate the tuned policy against its base on the eval prompts (`rlhf.evaluate`)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(
    eval_data: Input[Dataset],
    tuned_policy: Input[Model],
    reward_model: Input[Model],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    predictions: Output[Dataset],
    training_logs: Optional[Input[Artifact]] = None,
    large_model_reference: str = "",
    instruction: Optional[str] = None,
    prompt_sequence_length: int = 512,
    target_sequence_length: int = 64,
    batch_size: int = 8,
    num_report_samples: int = 20,
    max_examples: int = 0,
    sampling: bool = False,
    seed: int = 0,
    options: dict = {},
):
    """Bulk inference of base and tuned on the eval data (predictions in Google's bulk-inferrer rows),
    reward-model and independent-judge scores, KL(tuned || base), ROUGE-L; a self-contained HTML
    report, a Markdown summary and `eval/...` metrics. Warns loudly on signs of reward hacking.
    `training_logs`: the PPO metrics.jsonl or TensorBoard logs, for the curves. `options` sets any
    other `EvalConfig` field (e.g. {"temperature": 0.7, "measure_kl": false})."""
    from rlhf import storage
    from rlhf.evaluate.config import EvalConfig
    from rlhf.evaluate.run import EvalOutputs, evaluate

    config = EvalConfig.from_dict({
        **options, "eval_dataset": eval_data.path, "model": tuned_policy.path,
        "reward_model": reward_model.path,
        "training_history": training_logs.path if training_logs is not None else "",
        "large_model_reference": large_model_reference, "instruction": instruction or "",
        "prompt_sequence_length": prompt_sequence_length, "target_sequence_length": target_sequence_length,
        "batch_size": batch_size, "num_report_samples": num_report_samples, "max_examples": max_examples,
        "sampling": sampling, "seed": seed})
    result = evaluate(config, EvalOutputs(predictions_dir=predictions.path, report_html=report.path,
                                          summary_md=summary.path, metrics_json=metrics.path))
    for name, value in storage.read_json(metrics.path).items():
        metrics.log_metric(name, value)
    print(result.summary)
