"""How the pipeline's parameters reach each step's config: the one table behind the pipeline's
defaults, the components' `options` rule and the checks `rlhf submit` and `rlhf run-local` make.

A step's settings live in its config dataclass (default, help, check). The pipeline exposes some of
them as typed parameters (Google's names, e.g. `kl_coeff`, or ours with the stage's prefix, e.g.
`reinforcement_learning_batch_size`) and the rest through one `*_options` dict per trainer. Each
`Stage` below says which parameter feeds which field. Nothing here imports kfp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from rlhf.data.validate import ValidateConfig
from rlhf.dpo.config import DPOConfig
from rlhf.errors import UserError
from rlhf.evaluate.config import EvalConfig
from rlhf.label import LabelConfig
from rlhf.ppo.config import PPOConfig
from rlhf.reward.config import RewardConfig
from rlhf.sft.config import SFTConfig
from rlhf.settings import Settings

# Settings every model-loading stage takes under the same name.
_SHARED = ("large_model_reference", "instruction", "prompt_sequence_length", "target_sequence_length")


def _same(*names: str) -> dict[str, str]:
    return {name: name for name in names}


@dataclass(frozen=True)
class Stage:
    name: str                      # as messages name it
    config: type                   # the step's Settings dataclass
    parameters: Mapping[str, str]  # pipeline parameter -> config field
    options: str = ""              # the pipeline's dict parameter for any other field ("" for none)
    inputs: frozenset = frozenset()  # fields the pipeline fills from its data and earlier steps
    when: tuple = ()               # (parameter, value) pairs: the stage runs only then (checks too)

    def defaults(self) -> dict[str, Any]:
        """The config's default for each field the pipeline passes as a typed value (by field name):
        what a caller of the stage's component outside the pipeline passes for settings it keeps."""
        every = self.config.defaults()
        return {field: every[field] for field in self.parameters.values()}

    def settings_of(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The typed settings out of a component's arguments (its `locals()`): its inputs are named
        after the fields the pipeline feeds, so a new one needs no second list here."""
        return {field: arguments[field] for field in self.parameters.values()}

    def parameter_for(self, field: str) -> Optional[str]:
        return next((p for p, f in self.parameters.items() if f == field), None)

    def build(self, typed: Mapping[str, Any], options: Optional[Mapping[str, Any]] = None) -> Settings:
        """The config from the typed values (by field name) and the options dict. An option that
        repeats a typed parameter or a pipeline-filled input is an error, not silently overridden."""
        options = dict(options or {})
        self.check_options(options)
        return self.config.from_dict({**options, **typed}, f"{self.options or self.name}")

    def check_options(self, options: Mapping[str, Any]) -> None:
        problems = []
        for key in sorted(options):
            parameter = self.parameter_for(key)
            if parameter:
                problems.append(f"use the {parameter} parameter instead of {self.options}.{key}")
            elif key in self.inputs:
                problems.append(f"{self.options}.{key} is set by the pipeline (from its datasets and "
                                f"earlier steps); remove it")
        if problems:
            raise UserError("; ".join(problems))


VALIDATION = Stage("validation", ValidateConfig, {
    **_same("preference_dataset", "prompt_dataset", "eval_dataset", "labeled_dataset", "instruction",
            "prompt_sequence_length", "target_sequence_length"),
    "large_model_reference": "tokenizer",  # token counts and truncation in the stats
}, inputs=frozenset({"output_dir"}))

REWARD_MODEL = Stage("reward model", RewardConfig, {
    **_same(*_SHARED, "reward_model_train_steps", "reward_model_learning_rate_multiplier",
            "reward_lora_dim", "seed", "reward_model_type", "positive_label"),
    "reward_model_batch_size": "batch_size",
    "reward_model_gradient_accumulation_steps": "gradient_accumulation_steps",
}, options="reward_model_options",  # reward_from and class_weighting too (rarely changed)
    inputs=frozenset({"preference_dataset", "eval_dataset", "labeled_dataset", "output_dir", "tensorboard_dir"}))

REINFORCEMENT_LEARNING = Stage("reinforcement learning", PPOConfig, {
    **_same(*_SHARED, "reinforcement_learning_train_steps", "reinforcement_learning_rate_multiplier",
            "kl_coeff", "seed"),
    "reinforcement_learning_batch_size": "batch_size",
}, options="reinforcement_learning_options",
    inputs=frozenset({"prompt_dataset", "reward_model", "output_dir"}), when=(("tuning_method", "ppo"),))

# `tuning_method=dpo`: DPO in place of PPO. PPO's parameters feed it where they mean the same thing
# (kl_coeff is DPO's beta: both weigh the KL to the reference); the rest through `dpo_options`.
DPO = Stage("DPO", DPOConfig, {
    **_same(*_SHARED, "reinforcement_learning_train_steps", "reinforcement_learning_rate_multiplier", "seed"),
    "kl_coeff": "beta",
    "reinforcement_learning_batch_size": "batch_size",
}, options="dpo_options", inputs=frozenset({"preference_dataset", "output_dir"}),
    when=(("tuning_method", "dpo"),))
TUNING_METHODS = ("ppo", "dpo")  # the pipeline's `tuning_method`: the first is the default

EVALUATION = Stage("evaluation", EvalConfig, {
    **_same(*_SHARED, "seed"),
    "evaluation_batch_size": "batch_size",
    "evaluation_max_examples": "max_examples",
    "eval_classifiers": "eval_classifiers",
}, inputs=frozenset({"eval_dataset", "model", "output_dir", "reward_model", "training_history"}))

# Supervised fine-tuning before the reward model (`supervised_tuning`): its merged model becomes the
# base of every later stage. Its settings other than the shared ones go through `sft_options`.
SUPERVISED_FINE_TUNING = Stage("supervised fine-tuning", SFTConfig, _same(*_SHARED, "seed"),
                               options="sft_options",
                               inputs=frozenset({"sft_dataset", "preference_dataset", "output_dir", "tensorboard_dir",
                                                 "save_merged_model"}))
# The pipeline's `supervised_tuning`: off (the default), on the `sft_dataset`, or on the preferred
# candidates of the preference data.
SUPERVISED_TUNING = ("off", "sft_dataset", "preferred_candidates")

# AI feedback (`ai_feedback`): labels the prompts when no preference dataset is given.
LABELING = Stage("AI feedback", LabelConfig, _same("prompt_dataset", *_SHARED, "seed"),
                 options="ai_feedback_options", inputs=frozenset({"prompt_dataset", "output"}))

# SUPERVISED_FINE_TUNING joins STAGES when the pipeline has its parameters (sft_options, ...).
STAGES = (VALIDATION, REWARD_MODEL, REINFORCEMENT_LEARNING, DPO, EVALUATION, LABELING)

# Google's rlhf_pipeline fixes these parameters' defaults, which differ in form from the configs':
# required (no default) where a config has one, or None ("not given") where a config has "".
GOOGLE_DEFAULTS: dict[str, Any] = {
    "prompt_dataset": dataclasses.MISSING,
    "preference_dataset": dataclasses.MISSING,
    "large_model_reference": dataclasses.MISSING,
    "instruction": None,
    "eval_dataset": None,
}

def accelerator_type_problem(value: str) -> Optional[str]:
    """Google's `accelerator_type`: only GPU runs here (see rlhf.models.TPU_REFUSED)."""
    if value == "GPU":
        return None
    from rlhf.models import TPU_REFUSED
    return TPU_REFUSED if value == "TPU" else f"use GPU; {TPU_REFUSED}"


# Stages whose machines the pipeline sizes with `{prefix}_accelerator_type`, `_accelerator_count`,
# `_cpu_limit` and `_memory_limit` parameters.
HARDWARE_STAGES = ("reward_model", "reinforcement_learning", "evaluation")
# Training stages that may also run on several machines (`{prefix}_replica_count`) or a named
# machine type (`{prefix}_machine_type`) as a multi-node job (rlhf.jobs).
MULTI_NODE_STAGES = ("reward_model", "reinforcement_learning")


def default(parameter: str) -> Any:
    """The pipeline's default for `parameter`: the configs' common default for the field it feeds
    (`{}` for an options dict). Raises when the configs disagree, so a drift fails the build."""
    if any(stage.options == parameter for stage in STAGES):
        return {}
    found = {}
    for stage in STAGES:
        field = stage.parameters.get(parameter)
        if field is not None:
            found[stage.name] = stage.config.defaults()[field]
    if not found:
        raise KeyError(f"no step's config takes the pipeline parameter {parameter!r}")
    if len(set(map(repr, found.values()))) > 1:
        raise ValueError(f"the configs disagree on the default of {parameter}: {found}")
    return next(iter(found.values()))


def setting_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check pipeline parameter values (every parameter: given or default) with each step's own
    config; returns (parameter, problem) pairs. Fields the pipeline fills itself are not checked."""
    out: list[tuple[str, str]] = []
    method = values.get("tuning_method") or TUNING_METHODS[0]
    if method not in TUNING_METHODS:
        out.append(("tuning_method", f"tuning_method {method!r}: use one of {', '.join(TUNING_METHODS)}"))
    for stage in STAGES:
        if any((values.get(p) or TUNING_METHODS[0]) != v for p, v in stage.when):
            continue  # a stage this run skips: its settings do not apply
        typed = {field: values[p] for p, field in stage.parameters.items()
                 if p in values and values[p] is not None}
        options = values.get(stage.options) if stage.options else None
        try:
            config = stage.build(typed, options)
        except UserError as e:
            out.append((stage.options or stage.name, str(e)))
            continue
        for problem in config.problems(inputs=False):
            if problem.name in stage.inputs:
                continue
            parameter = stage.parameter_for(problem.name)
            where = parameter or f"{stage.options}.{problem.name}"
            out.append((parameter or stage.options, f"{where} {problem.value!r}: {problem.why}"))
    seen, unique = set(), []
    for item in out:  # a parameter several stages share is reported once
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique
