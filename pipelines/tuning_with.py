"""Stages 3 to 5 for a given reward model: tune the policy with PPO against it, or with DPO on the
preference pairs (`tuning_method`), then evaluate the policy and, on Vertex AI, deploy it.

`pipelines.tuning_from` calls it with the trained reward model or with the reference to an existing
classifier: kfp's local runner cannot pick one of two artifacts (`dsl.OneOf`), so the choice is made
by which call runs, and this graph is shared."""

from __future__ import annotations

from typing import Any, Mapping

from kfp import dsl
from kfp.dsl import Dataset, Model

from pipelines.deployment import DeploymentOutputs, deployment_stage
from pipelines.dpo import dpo_stage
from pipelines.evaluation import evaluation_stage
from pipelines.targets import (GPU_PROFILE, clear_of_sub_pipeline_groups, declared, hardware_parameters,
                               passed_through, stage_hardware, stage_parameters, stage_settings, sub_pipeline)
from pipelines.tuning import reinforcement_learning_stage
from rlhf.pipeline_settings import DPO, EVALUATION, REINFORCEMENT_LEARNING

# Deployment's settings (Vertex AI only).
DEPLOYMENT_PARAMETERS = ("deploy_model", "model_display_name", "project", "location", "serving_container_image_uri",
                         "serving_container_args", "serving_machine_type", "serving_accelerator_type",
                         "serving_accelerator_count")
# Artifacts from validation and the reward model, and whether an eval dataset was given.
ARTIFACTS = {"prompt_data": Dataset, "preference_data": Dataset, "eval_data": Dataset, "reward_model": Model,
             "has_eval_dataset": bool}
GROUPS_FROM = 100  # past the condition groups of the stages it calls (clear_of_sub_pipeline_groups)


def tuning_parameters(target: str) -> set[str]:
    """The pipeline parameters this graph reads."""
    return {*stage_parameters(REINFORCEMENT_LEARNING), *stage_parameters(DPO), *stage_parameters(EVALUATION),
            *hardware_parameters("reinforcement_learning"), *hardware_parameters("evaluation"),
            "tuning_method", "tensorboard_resource_id", "encryption_spec_key_name",
            *(DEPLOYMENT_PARAMETERS if target == "vertex" else ())}


def tuning_with_stage(target: str, training_operator: str | None, signature: Mapping[str, Any]):
    """The sub-pipeline; `signature`: the pipeline's parameters, whose declarations its inputs take."""
    reinforcement_learning = reinforcement_learning_stage(target, training_operator)
    tune_with_dpo = dpo_stage(target)
    evaluate = evaluation_stage(target)
    upload_and_deploy = deployment_stage(target) if target == "vertex" else None
    inputs = declared(ARTIFACTS) + passed_through(signature, tuning_parameters(target))

    @sub_pipeline("tune-with", "Tunes the policy (PPO or DPO) with the reward model, evaluates and deploys it.",
                  inputs, returns=DeploymentOutputs if upload_and_deploy else None)
    def pipeline(prompt_data, preference_data, eval_data, reward_model, has_eval_dataset, **params):
        def evaluate_and_deploy(policy):
            """The same evaluation and deployment for the policy either tuning method wrote."""
            evaluate(
                has_eval_dataset=has_eval_dataset,
                eval_data=eval_data,
                tuned_policy=policy.outputs["policy_adapter"],
                reward_model=reward_model,
                training_logs=policy.outputs["tensorboard_logs"],
                **stage_settings(EVALUATION, params),
                **stage_hardware("evaluation", params),
            ).set_display_name("Evaluate Tuned Model")
            if upload_and_deploy is None:
                return None
            return upload_and_deploy(
                tuned_model=policy.outputs["policy_adapter"],
                large_model_reference=params["large_model_reference"],
                encryption_spec_key_name=params["encryption_spec_key_name"],
                prompt_sequence_length=params["prompt_sequence_length"],
                target_sequence_length=params["target_sequence_length"],
                **{name: params[name] for name in DEPLOYMENT_PARAMETERS},
            ).set_display_name("Upload and Deploy Tuned Model")

        # Evaluation and deployment sit inside each branch: kfp's local runner cannot resolve a
        # dsl.OneOf of the two policies, and only Vertex (which can) returns deployment outputs.
        clear_of_sub_pipeline_groups(GROUPS_FROM)
        # PPO first: the default keeps its task names (tune-policy, evaluate-model).
        with dsl.If(params["tuning_method"] != "dpo", name="Tune with PPO"):
            policy = reinforcement_learning(
                prompt_data=prompt_data,
                reward_model=reward_model,
                options=params["reinforcement_learning_options"],
                tensorboard_resource_id=params["tensorboard_resource_id"],
                encryption_spec_key_name=params["encryption_spec_key_name"],
                **stage_settings(REINFORCEMENT_LEARNING, params),
                **stage_hardware("reinforcement_learning", params),
            ).set_display_name("Reinforcement Learning")
            ppo_deployed = evaluate_and_deploy(policy)
        with dsl.Else(name="Tune with DPO"):
            hardware = stage_hardware("reinforcement_learning", params)
            dpo_policy = tune_with_dpo(
                preference_data=preference_data,
                options=params["dpo_options"],
                tensorboard_resource_id=params["tensorboard_resource_id"],
                **stage_settings(DPO, params),
                **{k: hardware[k] for k in GPU_PROFILE},
            ).set_display_name("Direct Preference Optimization")
            dpo_deployed = evaluate_and_deploy(dpo_policy)

        if upload_and_deploy is None:
            return None
        return DeploymentOutputs(**{name: dsl.OneOf(ppo_deployed.outputs[name], dpo_deployed.outputs[name])
                                    for name in DeploymentOutputs._fields})

    return pipeline
