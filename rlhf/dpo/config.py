"""`DPOConfig`: every setting of the DPO step, shared by `rlhf dpo`, the KFP component and tests.

The pipeline feeds it the parameters PPO takes where they mean the same thing: the steps, the
learning-rate multiplier and the batch size of the tuning stage, and `kl_coeff` as DPO's `beta`
(both weigh the KL to the reference; TRL's default beta is 0.1, Google's kl_coeff too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Optional

from rlhf import settings
from rlhf.models import DEFAULT_MODEL, decoder_only_alias
from rlhf.policy_training import fields
from rlhf.policy_training.fields import LoRAPolicySettings
from rlhf.settings import Problem, given, non_negative, one_of, positive, setting, within

LOSS_TYPES = ("sigmoid", "ipo")

# The rate `reinforcement_learning_rate_multiplier` scales (LoRA, AdamW): TRL's DPO examples use
# 5e-7..5e-6 for full fine-tuning and ~10x that for LoRA.
BASE_LEARNING_RATE = 5e-5


@dataclass
class DPOConfig(LoRAPolicySettings):
    """Direct preference optimization of a LoRA policy; the reference is the base with the adapter
    disabled, its log-probs computed once per pair."""

    STEP: ClassVar[str] = "DPO"
    # Settings a restart may change without changing the result so far (rlhf.rundir compares the rest).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "preference_dataset", "reinforcement_learning_train_steps", "checkpoint_every",
        "keep_checkpoints", "sample_count", "save_merged_model", "log_every", "tensorboard_dir",
        "device", "devices"})

    # -- inputs and outputs ------------------------------------------------------------------
    preference_dataset: str = setting(
        "", "preference pairs: canonical JSONL written by `rlhf validate`, or a user file in any format "
            "validation accepts (validated first); local path, gs:// URI or glob",
        given("the preference pairs JSONL"))
    output_dir: str = setting(
        "", "where the policy adapter, metrics, samples, TensorBoard logs and checkpoints go (local, /gcs/ "
            "or gs://). Restarting with the same output_dir resumes from its last checkpoint",
        given("where the policy adapter and metrics go"))
    large_model_reference: str = setting(
        DEFAULT_MODEL, "the policy's base model, also the reference: an alias, a local or gs:// directory "
                       "in Hugging Face format, or a Hugging Face id",
        settings.all_of(given("a model alias, directory or Hugging Face id"), decoder_only_alias))
    instruction: str = settings.instruction()
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    # -- schedule (PPO's pipeline parameters feed these) --------------------------------------
    reinforcement_learning_train_steps: int = fields.train_steps(1000, "DPO")
    reinforcement_learning_rate_multiplier: float = fields.learning_rate_multiplier(BASE_LEARNING_RATE)
    batch_size: int = fields.batch_size("preference pairs")
    gradient_accumulation_steps: int = fields.gradient_accumulation_steps("pairs")
    warmup_ratio: float = fields.warmup_ratio(0.1)
    lr_scheduler: str = fields.lr_scheduler("linear")
    max_grad_norm: float = fields.max_grad_norm()
    seed: int = settings.seed()
    # -- objective ----------------------------------------------------------------------------
    beta: float = setting(0.1, "weight of the KL to the reference (DPO's β; TRL's default 0.1); the "
                               "pipeline's kl_coeff", positive)
    loss_type: str = setting("sigmoid", "sigmoid: DPO's −log σ(β·Δ) (Rafailov et al. 2023); ipo: "
                                        "(Δ − 1/(2β))² on length-averaged log-probs (Azar et al. 2023)",
                             one_of(*LOSS_TYPES))
    label_smoothing: float = setting(0.0, "sigmoid only: the assumed fraction of flipped labels "
                                          "(conservative DPO, Mitchell 2023); 0 is plain DPO",
                                     within(0, 0.5, high_open=True))
    heldout_fraction: float = setting(0.1, "fraction of the pairs held out for metrics at the end "
                                           "(heldout/); 0 for none", within(0, 1, high_open=True))
    max_heldout_pairs: int = fields.max_heldout("pairs")
    # -- model --------------------------------------------------------------------------------
    lora_rank: int = fields.lora_rank("LoRA rank of the policy adapter")
    lora_alpha: float = fields.lora_alpha()
    lora_dropout: float = fields.lora_dropout(0.0, "LoRA dropout in the policy's training passes")
    lora_target_modules: list[str] = fields.lora_target_modules("modules the policy LoRA adapts (or all-linear)")
    use_chat_template: Optional[bool] = settings.use_chat_template()
    # -- run ----------------------------------------------------------------------------------
    device: str = settings.device()
    devices: Optional[int] = settings.devices()
    dtype: str = settings.dtype()
    checkpoint_every: int = setting(50, "steps between checkpoints (and sample generations); 0: only at "
                                        "the end", non_negative)
    keep_checkpoints: int = fields.keep_checkpoints()
    sample_count: int = setting(8, "prompts whose greedy generations are written to samples/step-N.jsonl "
                                   "at each checkpoint", non_negative)
    save_merged_model: bool = setting(False, "also write the policy merged into the base, for serving")
    log_every: int = fields.log_every()
    tensorboard_dir: str = fields.tensorboard_dir()

    def cross_checks(self) -> Iterable[Problem]:
        if self.dtype == "fp16":
            yield Problem("dtype", self.dtype, settings.FP16_REFUSED)
        if self.label_smoothing and self.loss_type != "sigmoid":
            yield Problem("label_smoothing", self.label_smoothing, "applies to loss_type sigmoid only; "
                                                                   "set it to 0 with ipo")

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.reinforcement_learning_rate_multiplier

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps
