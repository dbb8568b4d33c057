"""Everything after validation (and supervised fine-tuning) from one base model: the reward model,
then `pipelines.tuning_with` (PPO or DPO, evaluation, deployment).

The reward model is trained, or with `reward_model` an existing classifier takes its place: a small
CPU step writes a reference to it (`rlhf.reward.existing`) that PPO and evaluation read as they read
a trained one. The pipeline calls this graph with its `large_model_reference` or with the SFT model,
so every stage here takes that as its base."""

from __future__ import annotations

from typing import Any, Mapping

from kfp import dsl
from kfp.dsl import Dataset

from components.existing_reward import existing_reward_model
from pipelines.deployment import DeploymentOutputs
from pipelines.reward import reward_model_stage
from pipelines.targets import (arguments_for, clear_of_sub_pipeline_groups, declared, hardware_parameters,
                               passed_through, request_small_machine, stage_hardware, stage_parameters,
                               stage_settings, sub_pipeline)
from pipelines.tuning_with import GROUPS_FROM as INNER_GROUPS_FROM
from pipelines.tuning_with import tuning_parameters, tuning_with_stage
from rlhf.pipeline_settings import EXISTING_REWARD_MODEL, REWARD_MODEL

ARTIFACTS = {"prompt_data": Dataset, "preference_data": Dataset, "eval_data": Dataset, "labeled_data": Dataset,
             "has_eval_dataset": bool}
GROUPS_FROM = INNER_GROUPS_FROM + 100  # past tune-with's condition groups


def tuning_from_parameters(target: str) -> set[str]:
    """The pipeline parameters this graph reads (`large_model_reference` among them: the base)."""
    return {*tuning_parameters(target), *stage_parameters(REWARD_MODEL), *stage_parameters(EXISTING_REWARD_MODEL),
            *hardware_parameters("reward_model")}


def tuning_from_stage(target: str, training_operator: str | None, signature: Mapping[str, Any]):
    """The sub-pipeline; `signature`: the pipeline's parameters, whose declarations its inputs take."""
    train_reward_model = reward_model_stage(target, training_operator)
    tune_with = tuning_with_stage(target, training_operator, signature)
    inputs = declared(ARTIFACTS) + passed_through(signature, tuning_from_parameters(target))
    deploys = target == "vertex"

    @sub_pipeline("tune-from", "Trains the reward model (or takes an existing classifier), then tunes, evaluates "
                               "and deploys the policy.", inputs, returns=DeploymentOutputs if deploys else None)
    def pipeline(prompt_data, preference_data, eval_data, labeled_data, has_eval_dataset, **params):
        datasets = dict(prompt_data=prompt_data, preference_data=preference_data, eval_data=eval_data,
                        has_eval_dataset=has_eval_dataset)
        clear_of_sub_pipeline_groups(GROUPS_FROM)
        # Training first: the default keeps its task names (train-reward-model, tune-with).
        with dsl.If(params["reward_model"] == "", name="Train the reward model"):
            reward = train_reward_model(
                preference_data=preference_data,
                eval_data=eval_data,
                labeled_data=labeled_data,
                options=params["reward_model_options"],
                tensorboard_resource_id=params["tensorboard_resource_id"],
                encryption_spec_key_name=params["encryption_spec_key_name"],
                **stage_settings(REWARD_MODEL, params),
                **stage_hardware("reward_model", params),
            ).set_display_name("Train Reward Model")
            trained = tune_with(**arguments_for(tune_with, params, **datasets,
                                                reward_model=reward.outputs["reward_model"]))
            trained.set_display_name("Tune with the Trained Reward Model")
        with dsl.Else(name="An existing classifier as the reward"):
            existing = existing_reward_model(**stage_settings(EXISTING_REWARD_MODEL, params))
            request_small_machine(existing, target).set_display_name("Existing Classifier as the Reward")
            classifier = tune_with(**arguments_for(tune_with, params, **datasets,
                                                   reward_model=existing.outputs["reference"]))
            classifier.set_display_name("Tune with the Existing Classifier")

        if not deploys:
            return None
        return DeploymentOutputs(**{name: dsl.OneOf(trained.outputs[name], classifier.outputs[name])
                                    for name in DeploymentOutputs._fields})

    return pipeline
