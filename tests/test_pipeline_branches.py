"""The compiled graph's branches: from the base model or from the SFT model (`supervised_tuning`),
with a trained reward model or an existing classifier (`reward_model`); the new parameters, their
defaults and descriptions; what each branch hands on."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from pipelines.rlhf_pipeline import build_pipeline
from rlhf.pipeline_settings import SUPERVISED_TUNING

NEW_PARAMETERS = {"supervised_tuning": ("STRING", "off"), "sft_dataset": ("STRING", ""),
                  "sft_options": ("STRUCT", {}), "reward_model": ("STRING", "")}


def _spec(target: str) -> dict:
    return json_format.MessageToDict(build_pipeline(target).pipeline_spec)


def _dag(spec: dict, component: str) -> dict:
    return spec["components"][component]["dag"]["tasks"] if component != "root" else spec["root"]["dag"]["tasks"]


def _branches(spec: dict, component: str) -> list[tuple[str, dict]]:
    """(condition, tasks) of the If/Else under `component`'s DAG."""
    tasks = _dag(spec, component)
    group = next(t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-condition-branches"))
    inner = _dag(spec, group["componentRef"]["name"])
    return [(t["triggerPolicy"]["condition"], _dag(spec, t["componentRef"]["name"]))
            for _, t in sorted(inner.items())]  # If, then Else


@pytest.mark.parametrize("target", ["vertex", "kfp", "local"])
def test_the_new_parameters_have_their_defaults_and_descriptions(target):
    parameters = _spec(target)["root"]["inputDefinitions"]["parameters"]
    for name, (kind, default) in NEW_PARAMETERS.items():
        assert parameters[name]["parameterType"] == kind, name
        assert parameters[name].get("defaultValue", "") == default, name
        assert parameters[name].get("description"), name
    assert SUPERVISED_TUNING[0] == "off"


def test_supervised_tuning_branches_hand_the_sft_model_on_as_the_base():
    spec = _spec("kfp")
    (off_condition, from_base), (sft_condition, from_sft) = _branches(spec, "root")
    assert off_condition == "inputs.parameter_values['pipelinechannel--supervised_tuning'] == 'off'"
    assert sft_condition == f"!({off_condition})"
    assert set(from_base) == {"tune-from"}
    assert set(from_sft) == {"supervised-fine-tuning", "tune-from-2"}
    base = from_base["tune-from"]["inputs"]["parameters"]["large_model_reference"]
    assert base == {"componentInputParameter": "pipelinechannel--large_model_reference"}
    sft_base = from_sft["tune-from-2"]["inputs"]["parameters"]["large_model_reference"]
    assert sft_base == {"taskOutputParameter": {"outputParameterKey": "base_model",
                                                "producerTask": "supervised-fine-tuning"}}
    sft_inputs = from_sft["supervised-fine-tuning"]["inputs"]
    assert set(sft_inputs["artifacts"]) == {"preference_data", "sft_data"}
    assert sft_inputs["parameters"]["supervised_tuning"] == {
        "componentInputParameter": "pipelinechannel--supervised_tuning"}


def test_an_existing_classifier_replaces_the_trained_reward_model_for_the_same_tuning_graph():
    spec = _spec("kfp")
    (trained_condition, trained), (existing_condition, existing) = _branches(spec, "comp-tune-from")
    assert trained_condition == "inputs.parameter_values['pipelinechannel--reward_model'] == ''"
    assert existing_condition == f"!({trained_condition})"
    assert set(trained) == {"reward-model", "tune-with"} and set(existing) == {"existing-reward-model", "tune-with-2"}
    assert trained["tune-with"]["inputs"]["artifacts"]["reward_model"] == {
        "taskOutputArtifact": {"outputArtifactKey": "reward_model", "producerTask": "reward-model"}}
    assert existing["tune-with-2"]["inputs"]["artifacts"]["reward_model"] == {
        "taskOutputArtifact": {"outputArtifactKey": "reference", "producerTask": "existing-reward-model"}}
    # the same tuning graph either way: PPO or DPO, then evaluation
    assert spec["components"]["comp-tune-with"]["dag"].keys() == spec["components"]["comp-tune-with-2"]["dag"].keys()


def test_vertex_returns_the_deployment_of_whichever_branch_ran():
    spec = _spec("vertex")
    outputs = spec["root"]["dag"]["outputs"]["parameters"]
    for name in ("model_resource_name", "endpoint_resource_name"):
        selectors = outputs[name]["valueFromParameter"]
        assert selectors["producerSubtask"].startswith("condition-branches"), selectors
    assert "deployment-skipped" not in spec["root"]["dag"]["tasks"]
    assert "deployment-skipped" in _spec("kfp")["root"]["dag"]["tasks"]  # other targets: empty names
