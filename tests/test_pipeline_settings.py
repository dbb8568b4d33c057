"""One source of truth for every setting: the compiled pipeline's defaults are the configs', the
components declare none of their own, an `*_options` key may not repeat a typed parameter, and the
configs share one validation method and message format."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
from kfp import compiler

import components
from pipelines.rlhf_pipeline import build_pipeline
from rlhf import parameters, pipeline_settings
from rlhf.data.validate import ValidateConfig
from rlhf.errors import UserError
from rlhf.evaluate.config import EvalConfig
from rlhf.pipeline_settings import GOOGLE_DEFAULTS, REINFORCEMENT_LEARNING, REWARD_MODEL, STAGES
from rlhf.ppo.config import PPOConfig
from rlhf.reward.config import RewardConfig
from rlhf.sft.config import SFTConfig

CONFIGS = (ValidateConfig, RewardConfig, PPOConfig, EvalConfig, SFTConfig)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("settings") / "vertex.yaml"
    compiler.Compiler().compile(build_pipeline("vertex"), str(path))
    return parameters.load_template(str(path))


def test_every_compiled_default_is_the_default_of_each_config_it_feeds(template):
    checked = 0
    for stage in STAGES:
        defaults = stage.config.defaults()
        for parameter, field in stage.parameters.items():
            compiled = template.parameters[parameter]
            if parameter in GOOGLE_DEFAULTS:  # Google's own: required, or None for "not given"
                google = GOOGLE_DEFAULTS[parameter]
                assert compiled.has_default is (google is not dataclasses.MISSING and google is not None), parameter
                continue
            assert compiled.has_default, f"{parameter} has no compiled default"
            assert compiled.default == defaults[field], (
                f"pipeline parameter {parameter} defaults to {compiled.default!r}, but {stage.config.__name__}."
                f"{field} defaults to {defaults[field]!r}")
            checked += 1
        if stage.options:
            assert template.parameters[stage.options].default == {}
    assert checked >= 15


def test_a_pipeline_parameter_named_like_a_config_field_is_wired_to_it(template):
    """A new parameter named after a setting must be mapped in pipeline_settings, or its value would
    never reach the step (and its default could drift)."""
    mapped = {p for stage in STAGES for p in stage.parameters} | {s.options for s in STAGES if s.options}
    fields = {f.name for config in CONFIGS for f in dataclasses.fields(config)}
    unmapped = sorted((set(template.parameters) & fields) - mapped)
    assert not unmapped, f"map these in rlhf/pipeline_settings.py: {unmapped}"


def test_configs_that_disagree_on_a_shared_default_fail_the_build(monkeypatch):
    original = PPOConfig.defaults

    def drifted(cls):
        return {**original(), "prompt_sequence_length": 1024}
    monkeypatch.setattr(PPOConfig, "defaults", classmethod(drifted))
    with pytest.raises(ValueError, match="disagree on the default of prompt_sequence_length"):
        pipeline_settings.default("prompt_sequence_length")


def _component_functions():
    for info in pkgutil.iter_modules(components.__path__):
        module = importlib.import_module(f"components.{info.name}")
        for value in vars(module).values():
            if hasattr(value, "python_func") and value.python_func.__module__ == module.__name__:
                yield value


def test_components_declare_no_setting_defaults():
    """A component's settings come from the pipeline (which takes them from the configs); the only
    default a component may declare is None, KFP's "not given" for an optional input."""
    found = list(_component_functions())
    assert len(found) >= 8
    for component in found:
        for p in inspect.signature(component.python_func).parameters.values():
            if p.default is not inspect.Parameter.empty:
                assert p.default is None, f"{component.name}.{p.name} declares the default {p.default!r}"


def test_an_option_that_repeats_a_typed_parameter_is_refused_naming_both():
    with pytest.raises(UserError, match="use the kl_coeff parameter instead of reinforcement_learning_options.kl_coeff"):
        REINFORCEMENT_LEARNING.build({"kl_coeff": 0.1}, {"kl_coeff": 0.5})
    with pytest.raises(UserError, match="use the reward_model_batch_size parameter instead of reward_model_options.batch_size"):
        REWARD_MODEL.build({}, {"batch_size": 4})
    with pytest.raises(UserError, match="reward_model_options.output_dir is set by the pipeline"):
        REWARD_MODEL.build({}, {"output_dir": "/tmp/x"})
    config = REINFORCEMENT_LEARNING.build({"kl_coeff": 0.2, "batch_size": 8.0}, {"mini_batch_size": 4.0})
    assert (config.kl_coeff, config.batch_size, config.mini_batch_size) == (0.2, 8, 4)


def test_setting_problems_name_the_pipeline_parameter_or_the_options_key():
    values = {"preference_dataset": "gs://b/pref.jsonl", "reinforcement_learning_batch_size": 6, "reinforcement_learning_options": {"mini_batch_size": 4},
              "reward_model_train_steps": 0}
    problems = dict(pipeline_settings.setting_problems(values))
    assert problems == {
        "reinforcement_learning_options": "reinforcement_learning_options.mini_batch_size 4: must divide batch_size 6",
        "reward_model_train_steps": "reward_model_train_steps 0: must be a positive integer"}
    # prompt_sequence_length feeds all four steps and is reported once
    assert pipeline_settings.setting_problems({"prompt_dataset": "p.jsonl", "prompt_sequence_length": -1}) == [
        ("prompt_sequence_length", "prompt_sequence_length -1: must be a positive integer")]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_validates_the_same_way(config):
    numeric = next(f.name for f in dataclasses.fields(config) if f.name == "prompt_sequence_length")
    with pytest.raises(UserError) as caught:
        config(**{numeric: 0}).validate(inputs=False)
    assert str(caught.value) == "--prompt-sequence-length 0: must be a positive integer"
    assert not hasattr(config, "check") and not hasattr(config, "validate_inputs")


def test_the_cli_and_the_pipeline_default_the_same_seed(template):
    """The drift the settings issue found: `rlhf train-reward --help` said seed 42, the pipeline 0."""
    import argparse
    parser = argparse.ArgumentParser()
    RewardConfig.add_arguments(parser)
    assert parser.parse_args([]).seed == template.parameters["seed"].default == 0
