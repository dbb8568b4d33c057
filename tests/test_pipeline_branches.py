"""The compiled graph's choices: each stage once, an option changing what it does. Supervised tuning
on or off hands the later stages their base model; an existing classifier reaches the reward stage;
PPO or DPO is the tune stage's own input; conditions read only checked values (the first task's)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from pipelines.rlhf_pipeline import build_pipeline
from rlhf.pipeline_settings import SUPERVISED_TUNING

NEW_PARAMETERS = {"supervised_tuning": ("STRING", "off"), "sft_dataset": ("STRING", ""),
                  "sft_options": ("STRUCT", {}), "reward_model": ("STRING", "")}
LATER_STAGES = ("train-reward-model", "tune-policy")


def _spec(target: str, operator: str | None = None) -> dict:
    return json_format.MessageToDict(build_pipeline(target, operator).pipeline_spec)


def _root(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def _task_named(spec: dict, display_name: str, component: dict | None = None, condition: str = ""):
    """(name, task) of the task shown as `display_name`, searched through condition groups; the task
    carries the condition of the nearest group around it as "condition"."""
    for name, task in (component or spec["root"])["dag"]["tasks"].items():
        here = task.get("triggerPolicy", {}).get("condition", condition)
        if task["taskInfo"]["name"] == display_name:
            return name, {**task, "condition": here}
        ref = spec["components"][task["componentRef"]["name"]]
        if "dag" in ref and name.startswith("condition"):
            found = _task_named(spec, display_name, ref, here)
            if found:
                return found
    if component is None:
        raise AssertionError(f"no task {display_name!r}")
    return None


@pytest.mark.parametrize("target", ["vertex", "kfp", "local"])
def test_the_new_parameters_have_their_defaults_and_descriptions(target):
    parameters = _spec(target)["root"]["inputDefinitions"]["parameters"]
    for name, (kind, default) in NEW_PARAMETERS.items():
        assert parameters[name]["parameterType"] == kind, name
        assert parameters[name].get("defaultValue", "") == default, name
        assert parameters[name].get("description"), name
    assert SUPERVISED_TUNING[0] == "off"


def test_supervised_tuning_hands_the_later_stages_the_sft_model_or_the_base_as_given():
    spec = _spec("kfp")
    _, sft = _task_named(spec, "Supervised Fine-Tuning")
    _, given = _task_named(spec, "Base Model as Given")
    assert sft["condition"] == "inputs.parameter_values['pipelinechannel--supervised_tuning'] != 'off'"
    assert given["condition"] == f"!({sft['condition']})"
    branches = next(n for n, t in _root(spec).items() if t["componentRef"]["name"].startswith("comp-condition-branches"))
    selectors = spec["components"][f"comp-{branches}"]["dag"]["outputs"]["parameters"]
    [(key, joined)] = selectors.items()
    keys = {s["outputParameterKey"] for s in joined["valueFromOneof"]["parameterSelectors"]}
    assert keys == {"pipelinechannel--supervised-fine-tuning-base_model", "pipelinechannel--base-model-as-given-Output"}
    for stage in LATER_STAGES:
        assert _root(spec)[stage]["inputs"]["parameters"]["large_model_reference"] == {
            "taskOutputParameter": {"outputParameterKey": key, "producerTask": branches}}, stage
    assert set(sft["inputs"]["artifacts"]) == {"preference_data", "sft_data"}


def test_the_reward_stage_adopts_an_existing_classifier_and_tuning_runs_either_method():
    root = _root(_spec("kfp"))
    reward = root["train-reward-model"]["inputs"]
    assert reward["parameters"]["existing_classifier"] == {"componentInputParameter": "reward_model"}
    tune = root["tune-policy"]["inputs"]
    assert tune["parameters"]["tuning_method"] == {"componentInputParameter": "tuning_method"}
    assert tune["artifacts"]["reward_model"] == {
        "taskOutputArtifact": {"outputArtifactKey": "reward_model", "producerTask": "train-reward-model"}}
    assert tune["artifacts"]["preference_data"]["taskOutputArtifact"]["producerTask"] == "ai-feedback-labels"
    assert not any("condition" in t.get("triggerPolicy", {}) for n, t in root.items() if n in LATER_STAGES)


@pytest.mark.parametrize("target,operator", [("vertex", None), ("kfp", "trainjob")])
def test_conditions_read_the_first_tasks_checked_answers(target, operator):
    spec = _spec(target, operator)
    evaluation = _root(spec)["evaluation"]
    assert evaluation["inputs"]["parameters"]["has_eval_dataset"]["taskOutputParameter"]["producerTask"] == \
        "validate-inputs"
    _, evaluate = _task_named(spec, "Evaluate Tuned Model", spec["components"][evaluation["componentRef"]["name"]])
    assert evaluate["condition"] == "inputs.parameter_values['pipelinechannel--has_eval_dataset'] == true"
    for stage in LATER_STAGES:  # a multi-node job or the task: one sub-pipeline, decided by the check
        as_job = _root(spec)[stage]["inputs"]["parameters"]["as_job"]
        assert as_job["taskOutputParameter"]["producerTask"] == "validate-inputs", stage
        stage_graph = spec["components"][_root(spec)[stage]["componentRef"]["name"]]
        assert _leaves(spec, stage_graph) == {"Launch the multi-node job",
                                              "Train in the pipeline task"}


def _leaves(spec: dict, component: dict) -> set[str]:
    out = set()
    for task in component["dag"]["tasks"].values():
        ref = spec["components"][task["componentRef"]["name"]]
        out |= _leaves(spec, ref) if "dag" in ref else {task["taskInfo"]["name"]}
    return out


def test_vertex_returns_the_deployment_and_other_targets_empty_names():
    outputs = _spec("vertex")["root"]["dag"]["outputs"]["parameters"]
    for name in ("model_resource_name", "endpoint_resource_name"):
        assert outputs[name]["valueFromParameter"]["producerSubtask"] == "upload-and-deploy"
    assert _root(_spec("vertex"))["upload-and-deploy"]["inputs"]["parameters"]["deploy_model"] == {
        "componentInputParameter": "deploy_model"}
    assert "deployment-skipped" in _root(_spec("kfp"))  # no Vertex AI: empty names, as Google's
