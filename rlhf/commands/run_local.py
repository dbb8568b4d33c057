"""`rlhf run-local`: run the whole pipeline on this machine with kfp's local runner.

By default it runs on the bundled sample data and the embedded default model with step counts small
enough to finish in minutes on 2 CPU cores; every flag and `--parameter NAME=VALUE` overrides that.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

from rlhf.errors import UserError

HELP = ("run the pipeline locally with kfp's local runner (on the bundled sample data and the embedded "
        "model by default), printing progress, where the outputs are and the evaluation summary")

DEFAULT_ROOT = "local_outputs"

# Sized for the 135M-parameter default model on 2 CPU cores: about 11 minutes end to end, measured
# (README); the pipeline's own defaults, Google's, are for GPUs. LoRA takes a larger learning rate
# than full fine-tuning, and so few steps need it: every stage runs at 10x its base rate.
LOCAL_DEFAULTS = {
    "large_model_reference": "smollm2-135m-instruct",
    # Start from a supervised model (Stiennon et al. 2020): fine-tuned on each training post's best
    # ranked candidate, it is the tuning's starting policy and the reference its KL is measured against.
    "supervised_tuning": "preferred_candidates",
    "sft_options": {"sft_train_steps": 30, "batch_size": 8, "sft_learning_rate_multiplier": 10.0},
    "reward_model_train_steps": 24,
    "reward_model_batch_size": 4,
    "reward_model_gradient_accumulation_steps": 2,
    "reward_model_learning_rate_multiplier": 10.0,
    # LoRA of rank 16 on every linear layer: 76.0% on 154 held-out training pairs (posts it did not
    # train on) against 68.8-71.4% for rank 4 or 16 on q/v, rank 4 everywhere or a 3x learning rate
    # (README, "Demo result"), for about 80 s more.
    "reward_lora_dim": 16,
    # Reward statistics for PPO's normalization from 64 pairs, not all of them: enough for a mean
    # and a spread, and the scoring pass would otherwise cost as much as the training.
    "reward_model_options": {"normalization_pairs": 64, "max_heldout_pairs": 64, "lora_alpha": 32.0,
                             "lora_target_modules": ["all-linear"]},
    # DPO on the judge-ranked pairs: in this budget PPO against a reward model that agrees with the
    # judge on about 70% of pairs did not beat its SFT start (README, "Demo result"). A classifier
    # reward needs PPO (`tuning_method_for`).
    "tuning_method": "dpo",
    # DPO's held-out metrics from 32 pairs, not 10% of 1,550: scoring 155 pairs cost about 3 minutes,
    # more than half its 10 steps.
    "dpo_options": {"max_heldout_pairs": 32},
    "reinforcement_learning_train_steps": 10,  # PPO's; DPO's is DPO_TRAIN_STEPS
    "reinforcement_learning_batch_size": 8,
    "reinforcement_learning_rate_multiplier": 10.0,
    "reinforcement_learning_options": {"mini_batch_size": 2, "ppo_epochs": 2},
    "prompt_sequence_length": 256,
    "target_sequence_length": 64,  # Google's default; shorter cuts most sample responses
    "evaluation_batch_size": 10,
    "evaluation_max_examples": 20,
    "deploy_model": False,
}

# A DPO step costs about a quarter of a PPO step here (no generation, no value head): DPO gets twice
# PPO's steps in the same budget. Chosen on 40 prompt-set posts no stage trains on and no other
# choice looked at (README, "Demo result"): 20 steps won 93.8% over the base there, 10 won 81.2%.
DPO_TRAIN_STEPS = 20

# Flags for the parameters people change most; any other one goes through --parameter.
_FLAGS = {
    "model": "large_model_reference",
    "reward_model_train_steps": "reward_model_train_steps",
    "reinforcement_learning_train_steps": "reinforcement_learning_train_steps",
    "prompt_sequence_length": "prompt_sequence_length",
    "target_sequence_length": "target_sequence_length",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline-root", default=DEFAULT_ROOT,
                        help=f"local directory for every task's outputs (default: ./{DEFAULT_ROOT})")
    parser.add_argument("--preference-dataset", help="preference JSONL: path, gs:// URI or glob (default: bundled sample)")
    parser.add_argument("--prompt-dataset", help="prompt JSONL for reinforcement learning (default: bundled sample)")
    parser.add_argument("--eval-dataset",
                        help="eval JSONL (default: bundled sample); pass an empty string to skip evaluation")
    parser.add_argument("--instruction",
                        help="instruction prepended to every prompt (default: the sample data's instruction "
                             "with the sample data, none with yours)")
    parser.add_argument("--model", help=f"large_model_reference: alias, model directory or gs:// URI "
                                        f"(default: {LOCAL_DEFAULTS['large_model_reference']})")
    for flag, name in _FLAGS.items():
        if flag != "model":
            parser.add_argument("--" + flag.replace("_", "-"), type=int,
                                help=f"{name} (default here: {_default_text(name)})")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="any other pipeline parameter (see the README's table); repeatable")
    parser.add_argument("--template", metavar="FILE",
                        help="run this compiled pipeline YAML instead of building the pipeline from the code")
    parser.add_argument("--cache", action="store_true",
                        help="reuse outputs of tasks whose inputs did not change (keyed on paths, not file "
                             "contents: leave off after editing a dataset in place)")


def _default_text(name: str) -> str:
    if name == "reinforcement_learning_train_steps":
        return f"{LOCAL_DEFAULTS[name]} for PPO, {DPO_TRAIN_STEPS} for DPO"
    return str(LOCAL_DEFAULTS[name])


def _datasets(args) -> dict[str, str]:
    from rlhf import samples

    given = {"preference_dataset": args.preference_dataset, "prompt_dataset": args.prompt_dataset,
             "eval_dataset": args.eval_dataset}
    defaults = {"preference_dataset": samples.preference_dataset, "prompt_dataset": samples.prompt_dataset,
                "eval_dataset": samples.eval_dataset}
    out = {name: (value if value is not None else defaults[name]()) for name, value in given.items()}
    for name, value in out.items():
        if value and not value.startswith("gs://"):
            out[name] = os.path.abspath(os.path.expanduser(value))  # tasks run in other directories
    uses_samples = args.preference_dataset is None
    out["instruction"] = args.instruction if args.instruction is not None else (
        samples.INSTRUCTION if uses_samples else "")
    return out


def load_pipeline(template: str | None):
    if template:
        from kfp import components
        if not os.path.isfile(template):
            raise UserError(f"--template {template}: no such file; compile one with `rlhf compile --output {template}`")
        return components.load_component_from_file(template)
    from pipelines.rlhf_pipeline import build_pipeline
    return build_pipeline("local")


def template_of(pipeline, template_path: str | None):
    from google.protobuf import json_format

    from rlhf.parameters import Template
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    return Template(template_path or "the local pipeline", spec)


def parameter_values(args, template) -> dict:
    """Every pipeline parameter for this run, typed and checked."""
    from rlhf import parameters

    values: dict = {}
    sources: dict = {}
    for name, value in {**LOCAL_DEFAULTS, **_datasets(args)}.items():
        values[name], sources[name] = value, "run-local default"
    for flag, name in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            values[name], sources[name] = value, "--" + flag.replace("_", "-")
    overrides = parameters.parse_assignments(args.parameter)
    for name, value in overrides.items():
        values[name], sources[name] = value, f"--parameter {name}={value}"
    bundled_labeled_dataset(values, sources)
    values["tuning_method"] = tuning_method_for(values, sources)
    if values["tuning_method"] == "dpo" and sources["reinforcement_learning_train_steps"] == "run-local default":
        values["reinforcement_learning_train_steps"] = DPO_TRAIN_STEPS
        sources["reinforcement_learning_train_steps"] = "run-local default for DPO"
    for name in ("labeled_dataset", "sft_dataset", "reward_model"):  # tasks run in other directories
        value = values.get(name)
        if isinstance(value, str) and value and os.path.exists(os.path.expanduser(value)):
            values[name] = os.path.abspath(os.path.expanduser(value))
    known = template.parameters
    values = {k: v for k, v in values.items() if k in known or k in overrides}  # a foreign template
    checked = parameters.check_parameters(template, values, sources, raw_strings=overrides)
    # kfp's local runner cannot pass an optional parameter left unset: give every one a value.
    for name, param in known.items():
        if checked.get(name) is None and param.optional and not param.has_default:
            checked[name] = ""
    return checked


def tuning_method_for(values: dict, sources: dict) -> str:
    """run-local's DPO default learns from preference pairs only: with a classifier reward (trained or
    existing) and no tuning_method of the user's, tune with PPO, which is what that reward is for."""
    classifier_reward = values.get("reward_model_type") == "classifier" or bool(str(values.get("reward_model") or ""))
    if classifier_reward and sources.get("tuning_method") == "run-local default":
        sources["tuning_method"] = "run-local default (a classifier reward: PPO)"
        return "ppo"
    return values.get("tuning_method", "ppo")


def bundled_labeled_dataset(values: dict, sources: dict) -> None:
    """A classifier reward model without its labeled data trains on the bundled labeled sample."""
    from rlhf import samples
    if values.get("reward_model_type") == "classifier" and not values.get("labeled_dataset"):
        values["labeled_dataset"], sources["labeled_dataset"] = samples.labeled_dataset(), "run-local default"


def _preflight(values: dict) -> None:
    """Check the datasets (and an existing classifier given as the reward) here first, so a mistake
    is a clear message, not a failed task."""
    from rlhf.data.validate import ValidateConfig, run_validation
    from rlhf.reward.existing import check_classifier

    report = run_validation(ValidateConfig(
        preference_dataset=values.get("preference_dataset", ""),
        prompt_dataset=values.get("prompt_dataset", ""), eval_dataset=values.get("eval_dataset", ""),
        labeled_dataset=values.get("labeled_dataset") or "", sft_dataset=values.get("sft_dataset") or "",
        instruction=values.get("instruction", "")))
    if not report.ok:
        raise UserError(report.problem_text())
    if str(values.get("reward_model") or "").strip():
        check_classifier(values["reward_model"], str(values.get("positive_label", "")))


def _show_plan(values: dict, root: str) -> None:
    print("rlhf run-local: the pipeline runs task by task with kfp's local runner")
    for name in ("preference_dataset", "prompt_dataset", "eval_dataset", "reward_model_type", "labeled_dataset",
                 "supervised_tuning", "sft_dataset", "reward_model", "positive_label", "tuning_method",
                 "instruction", "large_model_reference",
                 "reward_model_train_steps", "reinforcement_learning_train_steps"):
        if name in values:
            print(f"  {name:36s} {values[name]!r}")
    print(f"  {'outputs under':36s} {root}")
    print(flush=True)


def _newest_run_dir(root: Path, before: set) -> Path | None:
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p not in before]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


# What the main outputs are, for the listing at the end (other outputs are listed by name only).
_DESCRIPTIONS = {
    "validate-inputs/summary": "data validation summary (Markdown)",
    "validate-inputs/stats": "dataset statistics (JSON)",
    "validate-inputs/preference_data": "preference pairs, canonical JSONL",
    "validate-inputs/labeled_data": "labeled responses (reward_model_type=classifier), canonical JSONL",
    "validate-inputs/sft_data": "demonstrations (supervised_tuning=sft_dataset), canonical JSONL",
    "ai-feedback-labels/ranked_labels": "AI-feedback labels, ranked JSONL (with ai_feedback)",
    "ai-feedback-labels/preference_data": "the preference pairs every later stage reads (AI-labelled with ai_feedback)",
    "supervised-fine-tuning/sft_model": "the SFT model (supervised_tuning): the base of every later stage",
    "train-reward-model/reward_model": "the reward model (trained: LoRA adapter + score head; or the existing classifier's reference)",
    "train-reward-model/metrics": "reward model metrics (JSON)",
    "tune-policy/policy_adapter": "the tuned policy (PPO or DPO): a LoRA adapter on the base model",
    "tune-policy/samples": "sample generations during tuning",
    "tune-policy/tensorboard_logs": "tuning curves: tensorboard --logdir THIS",
    "evaluate-model/report": "evaluation report, tuned vs base (HTML: open in a browser)",
    "evaluate-model/summary": "evaluation summary (Markdown, printed below)",
    "evaluate-model/predictions": "base and tuned responses per eval prompt",
}


def find_outputs(run_dir: Path) -> dict[str, Path]:
    """Output files and directories of a finished local run, by `task/output` name. Each stage runs
    once, under its component's name; one kfp numbered (`tune-policy-2`) is listed under its own."""
    out = {}
    for path in sorted(run_dir.glob("*/*")):
        if path.name == "executor_output.json" or path.name.startswith("."):
            continue
        task = path.parent.name
        key = f"{re.sub(r'(-[0-9]+)+$', '', task)}/{path.name}"
        out[key if key not in out else f"{task}/{path.name}"] = path
    return out


def _show_outputs(run_dir: Path, outputs, elapsed: float) -> None:
    print(f"\nfinished in {elapsed:.0f} s; every task's outputs are under {run_dir}")
    found = find_outputs(run_dir)
    for key, description in _DESCRIPTIONS.items():  # in pipeline order
        if key in found and not (found[key].is_file() and found[key].stat().st_size == 0):  # a no-op's
            print(f"  {description}:\n      {found[key]}")
    others = sorted(set(found) - set(_DESCRIPTIONS))
    if others:
        print(f"  also: {', '.join(others)}")
    result = getattr(outputs, "outputs", None) or {}
    for name in ("model_resource_name", "endpoint_resource_name"):
        if result.get(name):
            print(f"  {name}: {result[name]}")
    summary = evaluation_summary(run_dir)
    if summary is not None:
        print(f"\nevaluation summary ({summary}):\n")
        print(summary.read_text(encoding="utf-8"))
    else:
        print("\nno evaluation ran (no eval dataset)")


def evaluation_summary(run_dir: Path) -> Path | None:
    """The Markdown summary the evaluation task wrote, if it ran."""
    for path in sorted(run_dir.glob("evaluate*/summary*")):
        if path.is_file() and path.suffix in (".md", ""):
            return path
    return None


def run(args: argparse.Namespace) -> int:
    import kfp.local

    pipeline = load_pipeline(args.template)
    template = template_of(pipeline, args.template)
    if template.target == "vertex":
        # Its deploy-or-skip branches hand outputs on with dsl.OneOf, which kfp's local runner cannot do.
        raise UserError(f"--template {args.template} was compiled for Vertex AI; kfp's local runner cannot "
                        f"run it: compile one with `rlhf compile --target kfp`, or leave out --template")
    values = parameter_values(args, template)
    _preflight(values)
    root = Path(args.pipeline_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    _show_plan(values, str(root))
    before = {p for p in root.iterdir()}
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   workspace_root=str(root / ".workspace"), enable_caching=args.cache,
                   cache_root=str(root / ".cache"))
    start = time.monotonic()
    try:
        outputs = pipeline(**values)
    except RuntimeError as e:
        print(f"\nthe pipeline failed: {e}\nthe failing task's log is above; outputs so far are under {root}")
        return 1
    run_dir = _newest_run_dir(root, before)
    _show_outputs(run_dir or root, outputs, time.monotonic() - start)
    return 0
