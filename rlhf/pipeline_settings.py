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
from typing import Any, Callable, Collection, Mapping, Optional

from rlhf.data.validate import ValidateConfig
from rlhf.dpo.config import DPOConfig
from rlhf.errors import UserError
from rlhf.evaluate.config import EvalConfig
from rlhf.label import LabelConfig
from rlhf.ppo.config import PPOConfig
from rlhf.reward.config import RewardConfig
from rlhf.reward.existing import ExistingRewardConfig
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
    # Whether the stage runs with these parameter values (every parameter: given or default); its
    # settings are checked only then.
    when: Callable[[Mapping[str, Any]], bool] = lambda values: True

    def defaults(self) -> dict[str, Any]:
        """The config's default for each field the pipeline passes as a typed value (by field name):
        what a caller of the stage's component outside the pipeline passes for settings it keeps."""
        every = self.config.defaults()
        return {field: every[field] for field in self.parameters.values()}

    def settings_of(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The typed settings out of a component's arguments (its `locals()`): its inputs are named
        after the fields the pipeline feeds, so a new one needs no second list here."""
        return {field: arguments[field] for field in self.parameters.values()}

    def fields_from(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The typed settings out of pipeline parameter values (by parameter name; None, an optional
        parameter left unset, leaves the field at its default)."""
        return {field: values[p] for p, field in self.parameters.items() if values.get(p) is not None}

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


# The pipeline's `tuning_method`: the first is the default.
TUNING_METHODS = ("ppo", "dpo")
# The pipeline's `supervised_tuning`: off (the default), on the `sft_dataset`, or on the preferred
# candidates of the preference data.
SUPERVISED_TUNING = ("off", "sft_dataset", "preferred_candidates")


def tuning_method(values: Mapping[str, Any]) -> str:
    return values.get("tuning_method") or TUNING_METHODS[0]


def supervised_tuning(values: Mapping[str, Any]) -> str:
    return values.get("supervised_tuning") or SUPERVISED_TUNING[0]


def existing_reward_model(values: Mapping[str, Any]) -> bool:
    """A classifier given as `reward_model`: the reward model is not trained."""
    return bool(str(values.get("reward_model") or "").strip())


VALIDATION = Stage("validation", ValidateConfig, {
    **_same("preference_dataset", "prompt_dataset", "eval_dataset", "labeled_dataset", "sft_dataset",
            "instruction", "prompt_sequence_length", "target_sequence_length"),
    "large_model_reference": "tokenizer",  # token counts and truncation in the stats
}, inputs=frozenset({"output_dir"}))

REWARD_MODEL = Stage("reward model", RewardConfig, {
    **_same(*_SHARED, "reward_model_train_steps", "reward_model_learning_rate_multiplier",
            "reward_lora_dim", "seed", "reward_model_type", "positive_label"),
    "reward_model_batch_size": "batch_size",
    "reward_model_gradient_accumulation_steps": "gradient_accumulation_steps",
}, options="reward_model_options",  # reward_from and class_weighting too (rarely changed)
    inputs=frozenset({"preference_dataset", "eval_dataset", "labeled_dataset", "output_dir", "tensorboard_dir"}),
    when=lambda values: not existing_reward_model(values))

# `reward_model` given: an existing classifier replaces the trained reward model (rlhf.reward.existing).
EXISTING_REWARD_MODEL = Stage("existing reward model", ExistingRewardConfig,
                              _same("reward_model", "positive_label"), when=existing_reward_model)

REINFORCEMENT_LEARNING = Stage("reinforcement learning", PPOConfig, {
    **_same(*_SHARED, "reinforcement_learning_train_steps", "reinforcement_learning_rate_multiplier",
            "kl_coeff", "seed"),
    "reinforcement_learning_batch_size": "batch_size",
}, options="reinforcement_learning_options",
    inputs=frozenset({"prompt_dataset", "reward_model", "positive_label", "output_dir"}),
    when=lambda values: tuning_method(values) == "ppo")

# `tuning_method=dpo`: DPO in place of PPO. PPO's parameters feed it where they mean the same thing
# (kl_coeff is DPO's beta: both weigh the KL to the reference); the rest through `dpo_options`.
DPO = Stage("DPO", DPOConfig, {
    **_same(*_SHARED, "reinforcement_learning_train_steps", "reinforcement_learning_rate_multiplier", "seed"),
    "kl_coeff": "beta",
    "reinforcement_learning_batch_size": "batch_size",
}, options="dpo_options", inputs=frozenset({"preference_dataset", "output_dir"}),
    when=lambda values: tuning_method(values) == "dpo")

EVALUATION = Stage("evaluation", EvalConfig, {
    **_same(*_SHARED, "seed"),
    "evaluation_batch_size": "batch_size",
    "evaluation_max_examples": "max_examples",
    "eval_classifiers": "eval_classifiers",
}, inputs=frozenset({"eval_dataset", "model", "output_dir", "reward_model", "positive_label", "training_history"}))

# Supervised fine-tuning before the reward model (`supervised_tuning`): its merged model becomes the
# base of every later stage. Its settings other than the shared ones go through `sft_options`.
SUPERVISED_FINE_TUNING = Stage("supervised fine-tuning", SFTConfig, _same(*_SHARED, "seed"),
                               options="sft_options",
                               inputs=frozenset({"sft_dataset", "preference_dataset", "output_dir", "tensorboard_dir",
                                                 "save_merged_model"}),
                               when=lambda values: supervised_tuning(values) != "off")

# AI feedback (`ai_feedback`): labels the prompts when no preference dataset is given.
LABELING = Stage("AI feedback", LabelConfig, _same("prompt_dataset", *_SHARED, "seed"),
                 options="ai_feedback_options", inputs=frozenset({"prompt_dataset", "output"}))

STAGES = (VALIDATION, SUPERVISED_FINE_TUNING, REWARD_MODEL, EXISTING_REWARD_MODEL, REINFORCEMENT_LEARNING, DPO,
          EVALUATION, LABELING)

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


def setting_problems(values: Mapping[str, Any], given: Optional[Collection[str]] = None) -> list[tuple[str, str]]:
    """Check pipeline parameter values (every parameter: given or default) with each step's own
    config; returns (parameter, problem) pairs. Fields the pipeline fills itself are not checked.
    `given`: the parameters the user set (None: unknown), for rules about what must be given."""
    out: list[tuple[str, str]] = []
    method = tuning_method(values)
    if method not in TUNING_METHODS:
        out.append(("tuning_method", f"tuning_method {method!r}: use one of {', '.join(TUNING_METHODS)}"))
    if supervised_tuning(values) not in SUPERVISED_TUNING:
        out.append(("supervised_tuning", f"supervised_tuning {supervised_tuning(values)!r}: use one of "
                                         f"{', '.join(SUPERVISED_TUNING)}"))
    out += combination_problems(values, given)
    for stage in STAGES:
        if not stage.when(values):
            continue  # a stage this run skips: its settings do not apply
        typed = stage.fields_from(values)
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


def combination_problems(values: Mapping[str, Any], given: Optional[Collection[str]] = None) -> list[tuple[str, str]]:
    """Parameters that only make sense together (`supervised_tuning` and `sft_dataset`; an existing
    classifier `reward_model` and what would train one), as (parameter, problem) pairs."""
    out = []
    mode, sft_dataset = supervised_tuning(values), str(values.get("sft_dataset") or "").strip()
    if mode == "sft_dataset" and not sft_dataset:
        out.append(("sft_dataset", "supervised_tuning sft_dataset needs sft_dataset: set it to a supervised-tuning "
                                   "JSONL ({\"input_text\", \"output_text\"} or chat \"messages\" ending with the "
                                   "answer), or use supervised_tuning=preferred_candidates to fine-tune on the "
                                   "preference data's preferred responses"))
    elif sft_dataset and mode != "sft_dataset":
        out.append(("sft_dataset", f"sft_dataset is set but supervised_tuning is {mode}, so it would not be "
                                   f"used: set supervised_tuning=sft_dataset, or leave sft_dataset empty"))
    if existing_reward_model(values):
        if given is not None and "positive_label" not in given:
            out.append(("positive_label", "reward_model (an existing classifier) needs positive_label: set it "
                                          "to the class whose score is the reward (a name from the "
                                          "classifier's id2label, e.g. POSITIVE)"))
        if (values.get("reward_model_type") or "pairwise") == "classifier":
            out.append(("reward_model_type", "reward_model_type classifier trains a classifier reward model, "
                                             "but reward_model gives an existing one: drop reward_model_type "
                                             "(or reward_model, to train on labeled_dataset)"))
        elif str(values.get("labeled_dataset") or "").strip():
            out.append(("labeled_dataset", "labeled_dataset trains a classifier reward model, but "
                                           "reward_model gives an existing one: leave labeled_dataset empty "
                                           "(or reward_model, to train on it with reward_model_type=classifier)"))
    return out
