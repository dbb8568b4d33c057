"""The RLHF pipeline: a drop-in for Google's `rlhf_pipeline` (google-cloud-pipeline-components 2.22).

Same parameter names, types and defaults as Google's, so existing `parameter_values` keep working,
plus ours (each with a default, so the Vertex console's run form shows it editable). The docstring's
Args become the parameters' descriptions in the compiled YAML (the console shows them; `rlhf compile
--list-parameters` prints them as the README's table). The body is a table of contents: each stage is
added once, in the order data flows (`pipelines.stages`).
"""

import functools
import inspect
from typing import NamedTuple, Optional

from kfp import dsl

from pipelines import stages
from pipelines.targets import (LOCATION_PLACEHOLDER, PROJECT_ID_PLACEHOLDER, check_target,
                               clear_of_sub_pipeline_groups, job_platform)
from rlhf.pipeline_settings import SUPERVISED_TUNING, TUNING_METHODS, default
from rlhf.deploy import DEFAULT_SERVING_IMAGE

PIPELINE_NAME = "rlhf-train-template"

# Recorded in the compiled description; `rlhf submit` reads it to refuse a template built for elsewhere.
_TARGET_NOTE = {"vertex": "vertex", "kfp": "kfp", "kfp-cpu": "kfp, no GPUs", "local": "local"}

PipelineOutput = NamedTuple("Outputs", model_resource_name=str, endpoint_resource_name=str)


@functools.lru_cache(maxsize=None)
def build_pipeline(target: str = "vertex", training_operator: Optional[str] = None):
    """The pipeline compiled for `target` (see `pipelines.targets`); on a Kubeflow target with a
    `training_operator` (trainjob or pytorchjob) a multi-node stage runs as that operator's job."""
    check_target(target)
    job_platform(target, training_operator)  # checks the operator's name

    def rlhf_pipeline(
        # Google's rlhf_pipeline parameters, in its order. Where a step's config holds the setting,
        # the default is the config's (`default`, checked equal to Google's by the tests); the rest
        # are Google's own (required, or None for "not given": rlhf.pipeline_settings.GOOGLE_DEFAULTS).
        prompt_dataset: str,
        preference_dataset: str,
        large_model_reference: str,
        model_display_name: Optional[str] = None,
        prompt_sequence_length: int = default("prompt_sequence_length"),
        target_sequence_length: int = default("target_sequence_length"),
        reward_model_learning_rate_multiplier: float = default("reward_model_learning_rate_multiplier"),
        reinforcement_learning_rate_multiplier: float = default("reinforcement_learning_rate_multiplier"),
        reward_model_train_steps: int = default("reward_model_train_steps"),
        reinforcement_learning_train_steps: int = default("reinforcement_learning_train_steps"),
        kl_coeff: float = default("kl_coeff"),
        instruction: Optional[str] = None,
        deploy_model: bool = True,
        eval_dataset: Optional[str] = None,
        project: str = PROJECT_ID_PLACEHOLDER,
        accelerator_type: str = "GPU",
        location: str = LOCATION_PLACEHOLDER,
        encryption_spec_key_name: str = "",
        tensorboard_resource_id: str = "",
        # Ours: training settings.
        seed: int = default("seed"),
        supervised_tuning: str = SUPERVISED_TUNING[0],
        sft_dataset: str = default("sft_dataset"),
        sft_options: dict = default("sft_options"),
        reward_lora_dim: int = default("reward_lora_dim"),
        reward_model_batch_size: int = default("reward_model_batch_size"),
        reward_model_gradient_accumulation_steps: int = default("reward_model_gradient_accumulation_steps"),
        reward_model_options: dict = default("reward_model_options"),
        reward_model_type: str = default("reward_model_type"),
        labeled_dataset: str = default("labeled_dataset"),
        positive_label: str = default("positive_label"),
        reward_model: str = default("reward_model"),
        reinforcement_learning_batch_size: int = default("reinforcement_learning_batch_size"),
        reinforcement_learning_options: dict = default("reinforcement_learning_options"),
        tuning_method: str = TUNING_METHODS[0],
        dpo_options: dict = default("dpo_options"),
        evaluation_batch_size: int = default("evaluation_batch_size"),
        evaluation_max_examples: int = default("evaluation_max_examples"),
        eval_classifiers: list = default("eval_classifiers"),
        ai_feedback: bool = False,
        ai_feedback_options: dict = default("ai_feedback_options"),
        # Ours: hardware per stage.
        reward_model_accelerator_type: str = "NVIDIA_L4",
        reward_model_accelerator_count: int = 1,
        reward_model_cpu_limit: str = "8",
        reward_model_memory_limit: str = "32G",
        reward_model_replica_count: int = 1,
        reward_model_machine_type: str = "",
        reinforcement_learning_accelerator_type: str = "NVIDIA_L4",
        reinforcement_learning_accelerator_count: int = 1,
        reinforcement_learning_cpu_limit: str = "8",
        reinforcement_learning_memory_limit: str = "32G",
        reinforcement_learning_replica_count: int = 1,
        reinforcement_learning_machine_type: str = "",
        evaluation_accelerator_type: str = "NVIDIA_L4",
        evaluation_accelerator_count: int = 1,
        evaluation_cpu_limit: str = "8",
        evaluation_memory_limit: str = "32G",
        # Ours: serving (Vertex AI, when deploy_model).
        serving_container_image_uri: str = DEFAULT_SERVING_IMAGE,
        serving_container_args: list = [],
        serving_machine_type: str = "g2-standard-12",
        serving_accelerator_type: str = "NVIDIA_L4",
        serving_accelerator_count: int = 1,
    ) -> PipelineOutput:
        """Performs reinforcement learning from human feedback.

        Args:
          prompt_dataset: Prompts for reinforcement learning (JSONL): a gs:// URI or glob. Each line has `input_text`, `prompt`, or chat `messages` (`author`/`role` and `content`, first and last turn from the user). Google's parameter.
          preference_dataset: Human (or AI) preference pairs (JSONL) to train the reward model (empty: AI feedback labels them, with ai_feedback): Google's `input_text`/`candidate_0`/`candidate_1`/`choice` format, its chat format (`messages`), TRL's `prompt`/`chosen`/`rejected`, or ranked `candidates` with a `ranking`. Google's parameter.
          large_model_reference: The base model: an alias (`smollm2-135m-instruct`, `llama-2-7b`, `gemma-2b-it`, ...), a gs:// directory in Hugging Face format, or a Hugging Face id. Google's parameter (PaLM names have no open weights).
          model_display_name: Name of the tuned model in the Model Registry; default: the base model's name, `-rlhf-` and the pipeline job name. Google's parameter.
          prompt_sequence_length: Maximum prompt length in tokens; longer prompts keep their last tokens. Google's parameter.
          target_sequence_length: Maximum response length in tokens (generation and reward model). Google's parameter.
          reward_model_learning_rate_multiplier: Multiplies the reward model's base learning rate (1e-4, AdamW). Google's parameter.
          reinforcement_learning_rate_multiplier: Multiplies PPO's base learning rate (3e-5, AdamW). Google's parameter.
          reward_model_train_steps: Reward model optimizer steps. Google's parameter.
          reinforcement_learning_train_steps: PPO steps (each samples `reinforcement_learning_batch_size` prompts). Google's parameter.
          kl_coeff: Weight of the KL penalty against the base model; 0 turns it off (and skips the reference pass). Google's parameter.
          instruction: Text prepended to every prompt, e.g. "Summarize in less than 50 words." (a row's own instruction wins). Google's parameter.
          deploy_model: Upload the tuned model to the Vertex AI Model Registry and deploy it to an endpoint (Vertex AI only). Google's parameter.
          eval_dataset: Held-out prompts (JSONL, optionally with preference pairs and a `reference`): the tuned model is evaluated against its base on them when given. Google's parameter.
          project: Project for Vertex AI resources (model, endpoint, TensorBoard); default: the pipeline's project. Google's parameter.
          accelerator_type: `GPU` (Google's parameter, kept for compatibility): the trainers run on NVIDIA GPUs; `TPU` is refused before anything runs.
          location: Region for Vertex AI resources; default: the pipeline's region. Google's parameter.
          encryption_spec_key_name: Cloud KMS key for the model, the endpoint and the multi-node training jobs the pipeline creates (`rlhf submit --encryption-spec-key-name` sets it too). Google's parameter.
          tensorboard_resource_id: Vertex AI TensorBoard (`projects/P/locations/L/tensorboards/ID`) that receives the training metrics; empty for none. Google's parameter.
          seed: Random seed of every stage: data order, held-out split, initialization, PPO sampling and evaluation sampling.
          supervised_tuning: Supervised fine-tuning before the reward model: `off`, `sft_dataset` (on sft_dataset's demonstrations) or `preferred_candidates` (on the preferred response of each preference pair). Its merged model is then the base of every later stage: the reward model, PPO (and its KL reference), DPO, evaluation and deployment. It runs on the reinforcement_learning_* GPUs.
          sft_dataset: Demonstrations (JSONL) for supervised_tuning sft_dataset, in Vertex AI's supervised tuning format: `input_text` and `output_text`, or chat `messages` ending with the model's answer; validated with the other datasets.
          sft_options: Any supervised fine-tuning setting as a JSON object, e.g. {"sft_train_steps": 200, "sft_learning_rate_multiplier": 2, "lora_rank": 16} (see `rlhf sft --help`); a setting that has its own parameter (seed, instruction, ...) is refused here.
          reward_lora_dim: LoRA rank of the reward model (Google's reward trainer uses 4).
          reward_model_batch_size: Preference pairs per forward pass of the reward model.
          reward_model_gradient_accumulation_steps: Forward passes per reward model step (pairs per step = batch size x this).
          reward_model_options: Any other reward model setting as a JSON object, e.g. {"lora_alpha": 16, "margin": 0.5, "heldout_fraction": 0.1} (see `rlhf train-reward --help`); a setting that has its own parameter (seed, reward_model_batch_size, ...) is refused here.
          reward_model_type: `pairwise` (a Bradley-Terry reward model trained on the preference pairs) or `classifier` (a sequence classifier trained on labeled_dataset with class-balanced cross-entropy; the reward is the positive_label class's logit, or its log-probability with reward_model_options {"reward_from": "logprob"}).
          labeled_dataset: Labeled responses (JSONL) for reward_model_type classifier: each line has `input_text` (or chat `messages`), `output_text` and `label` (an integer class or a class name); validated with the other datasets.
          positive_label: With reward_model_type classifier, the class whose score is the reward (a class name, or an integer class as text); with reward_model, required: the existing classifier's class (a name from its id2label, e.g. POSITIVE).
          reward_model: An existing Hugging Face sequence classifier as the reward (alias, local or gs:// directory; with positive_label): no reward model is trained, PPO is rewarded with (and evaluation scores by) that class's logit of the response. Empty: train the reward model.
          reinforcement_learning_batch_size: Prompts sampled per PPO step.
          reinforcement_learning_options: Any other PPO setting as a JSON object, e.g. {"mini_batch_size": 8, "ppo_epochs": 4, "lora_rank": 8, "temperature": 0.7, "adaptive_kl": true} (see `rlhf tune --help`); a setting that has its own parameter (kl_coeff, seed, ...) is refused here.
          tuning_method: `ppo` (reinforcement learning against the reward model) or `dpo` (direct preference optimization on the preference pairs: no PPO; the reward model is still trained, for evaluation's reward scores). DPO takes the reinforcement_learning_* steps, learning rate multiplier (of 5e-5), batch size and hardware, and kl_coeff as its beta.
          dpo_options: Any other DPO setting as a JSON object, e.g. {"loss_type": "ipo", "gradient_accumulation_steps": 4, "lora_rank": 8} (see `rlhf dpo --help`); a setting that has its own parameter (kl_coeff, seed, ...) is refused here.
          evaluation_batch_size: Eval prompts generated per batch.
          evaluation_max_examples: Evaluate on the first N eval prompts only; 0 for all.
          eval_classifiers: Classifiers that score the base and tuned responses in evaluation, each "REF=LABEL": a classifier reward model directory or a Hugging Face sequence classifier (alias, local or gs:// directory) and the class whose probability is reported, e.g. ["gs://bucket/toxicity=toxic"].
          ai_feedback: With an empty preference_dataset, label the prompt dataset with AI feedback instead: sample responses from the base model and rank them with a judge, the bundled constitution by default (see `rlhf label`).
          ai_feedback_options: Any AI feedback setting as a JSON object, e.g. {"candidates": 4, "max_prompts": 2000, "temperature": 0.8, "judge": "my_judges:vertex_judge"} (see `rlhf label --help`; a judge module must be importable in the image); a setting that has its own parameter (seed, instruction, ...) is refused here.
          reward_model_accelerator_type: GPU for reward model training on Vertex AI (NVIDIA_L4, NVIDIA_TESLA_A100, NVIDIA_A100_80GB, NVIDIA_H100_80GB, ...).
          reward_model_accelerator_count: GPUs for reward model training (on a Kubeflow cluster: nvidia.com/gpu).
          reward_model_cpu_limit: CPUs for reward model training; Vertex AI picks the smallest machine with the GPUs, CPUs and memory asked for.
          reward_model_memory_limit: Memory for reward model training, e.g. 32G.
          reward_model_replica_count: Machines for reward model training; more than 1 runs it as a multi-node job (Vertex AI: a CustomJob; Kubeflow: a TrainJob) with the stage's GPUs on every machine.
          reward_model_machine_type: Machine type for reward model training as a job, e.g. a3-highgpu-8g, a2-ultragpu-8g, g2-standard-48 (on Kubeflow: the nodes' node.kubernetes.io/instance-type); empty: chosen from the accelerator type and count, and with one machine the stage trains in its pipeline task.
          reinforcement_learning_accelerator_type: GPU for PPO on Vertex AI.
          reinforcement_learning_accelerator_count: GPUs for PPO (on a Kubeflow cluster: nvidia.com/gpu).
          reinforcement_learning_cpu_limit: CPUs for PPO.
          reinforcement_learning_memory_limit: Memory for PPO, e.g. 32G.
          reinforcement_learning_replica_count: Machines for PPO; more than 1 runs it as a multi-node job (Vertex AI: a CustomJob; Kubeflow: a TrainJob) with the stage's GPUs on every machine.
          reinforcement_learning_machine_type: Machine type for PPO as a job, e.g. a3-highgpu-8g (on Kubeflow: the nodes' node.kubernetes.io/instance-type); empty: chosen from the accelerator type and count, and with one machine PPO trains in its pipeline task.
          evaluation_accelerator_type: GPU for evaluation on Vertex AI.
          evaluation_accelerator_count: GPUs for evaluation.
          evaluation_cpu_limit: CPUs for evaluation.
          evaluation_memory_limit: Memory for evaluation, e.g. 32G.
          serving_container_image_uri: Serving container of the deployed model; the default (Vertex Model Garden's vLLM) loads the merged model from Cloud Storage.
          serving_container_args: Command line of a custom serving container; empty: vLLM's, for the default image.
          serving_machine_type: Machine of the endpoint, e.g. g2-standard-12 (one L4).
          serving_accelerator_type: GPU of the endpoint.
          serving_accelerator_count: GPUs of the endpoint.

        Returns:
          model_resource_name: The model uploaded to the Model Registry; empty when not deployed.
          endpoint_resource_name: The endpoint serving it; empty when not deployed.
        """
        # every parameter by name, for the stages below (locals() also holds this closure's names)
        params = {name: value for name, value in locals().items() if name in signature}
        clear_of_sub_pipeline_groups()  # the training stages' own conditions come first
        checked = stages.validate(target, training_operator, signature, params)
        preference_data = stages.label(target, params, checked).outputs["preference_data"]
        base_model = stages.fine_tune(target, params, checked, preference_data)
        reward = stages.train_reward(target, training_operator, params, checked, preference_data, base_model)
        reward_model = reward.outputs["reward_model"]
        policy = stages.tune(target, training_operator, params, checked, preference_data, reward_model, base_model)
        evaluation = stages.evaluate(target, training_operator, params, checked, policy, reward_model, base_model)
        model, endpoint = stages.deploy(target, params, policy, evaluation, base_model)
        return PipelineOutput(model_resource_name=model, endpoint_resource_name=endpoint)

    signature = dict(inspect.signature(rlhf_pipeline).parameters)
    stages.sub_pipelines(target, training_operator)  # built before the pipeline that calls them
    return dsl.pipeline(name=PIPELINE_NAME, description=(
        f"Performs reinforcement learning from human feedback (target: {_TARGET_NOTE[target]})."))(rlhf_pipeline)

