"""`SFTConfig`: every setting of the supervised fine-tuning step, shared by `rlhf sft`, the KFP
component and tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Optional

from rlhf import settings
from rlhf.models import DEFAULT_MODEL, decoder_only_alias
from rlhf.policy_training import fields
from rlhf.policy_training.fields import LoRAPolicySettings
from rlhf.settings import Problem, non_negative, setting, within

# The rate `sft_learning_rate_multiplier` scales (LoRA, AdamW): LoRA fine-tuning commonly uses
# 1e-4..2e-4 (Hu et al. 2021; QLoRA, Dettmers et al. 2023, uses 2e-4 for small models).
BASE_LEARNING_RATE = 1e-4


@dataclass
class SFTConfig(LoRAPolicySettings):
    """Supervised fine-tuning of a LoRA adapter on (prompt, answer) demonstrations, merged into the
    base at the end."""

    STEP: ClassVar[str] = "SFT"
    # Settings a restart may change without changing the result so far (rlhf.rundir compares the rest).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "sft_dataset", "preference_dataset", "sft_train_steps", "checkpoint_every",
        "keep_checkpoints", "save_merged_model", "log_every", "tensorboard_dir", "device", "devices"})

    # -- inputs and outputs ------------------------------------------------------------------
    sft_dataset: str = setting(
        "", "demonstrations: input_text + output_text, or chat messages ending with the assistant's answer "
            "(Vertex AI's supervised tuning format; canonical sft.jsonl from `rlhf validate` too); local, gs:// "
            "or glob. Empty: the preferred candidates of --preference-dataset")
    preference_dataset: str = setting(
        "", "used when --sft-dataset is empty: fine-tune on the preferred response of each pair (each "
            "prompt's best candidates, deduplicated)")
    output_dir: str = setting(
        "", "where the adapter, the merged model, metrics, TensorBoard logs and checkpoints go (local, /gcs/ "
            "or gs://). Restarting with the same output_dir resumes from its last checkpoint",
        settings.given("where the SFT outputs go"))
    large_model_reference: str = setting(
        DEFAULT_MODEL, "the base model: an alias, a local or gs:// directory in Hugging Face format, or a "
                       "Hugging Face id",
        settings.all_of(settings.given("a model alias, directory or Hugging Face id"), decoder_only_alias))
    instruction: str = settings.instruction()
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    # -- schedule -----------------------------------------------------------------------------
    sft_train_steps: int = fields.train_steps(500, "SFT")
    sft_learning_rate_multiplier: float = fields.learning_rate_multiplier(BASE_LEARNING_RATE)
    batch_size: int = fields.batch_size("examples")
    gradient_accumulation_steps: int = fields.gradient_accumulation_steps("examples")
    warmup_ratio: float = fields.warmup_ratio(0.05)
    lr_scheduler: str = fields.lr_scheduler("cosine")
    max_grad_norm: float = fields.max_grad_norm()
    seed: int = settings.seed()
    heldout_fraction: float = setting(0.05, "fraction of the examples held out for heldout/loss at the end; "
                                            "0 for none", within(0, 1, high_open=True))
    max_heldout_examples: int = fields.max_heldout("examples")
    # -- model --------------------------------------------------------------------------------
    lora_rank: int = fields.lora_rank()
    lora_alpha: float = fields.lora_alpha()
    lora_dropout: float = fields.lora_dropout(0.05)
    lora_target_modules: list[str] = fields.lora_target_modules()
    use_chat_template: Optional[bool] = settings.use_chat_template()
    # -- run ----------------------------------------------------------------------------------
    device: str = settings.device()
    devices: Optional[int] = settings.devices()
    dtype: str = settings.dtype()
    checkpoint_every: int = setting(50, "steps between checkpoints; 0: only at the end", non_negative)
    keep_checkpoints: int = fields.keep_checkpoints()
    save_merged_model: bool = setting(True, "write the adapter merged into the base (merged_model/): the "
                                            "base model of the steps after SFT")
    log_every: int = fields.log_every()
    tensorboard_dir: str = fields.tensorboard_dir()

    def cross_checks(self) -> Iterable[Problem]:
        if not self.sft_dataset and not self.preference_dataset:
            yield Problem("sft_dataset", self.sft_dataset, "is required: give the demonstrations, or "
                          "--preference-dataset to fine-tune on its preferred candidates")
        if self.dtype == "fp16":
            yield Problem("dtype", self.dtype, settings.FP16_REFUSED)

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.sft_learning_rate_multiplier

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps
