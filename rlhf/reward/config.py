"""The reward step's settings: one dataclass behind `rlhf train-reward` flags, the
`train_reward_model` component's parameters and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rlhf.configargs import dataclass_from_loose_dict
from rlhf.errors import UserError

# The learning rate that `reward_model_learning_rate_multiplier` scales: the usual AdamW rate for a
# LoRA reward model (TRL's RewardConfig default); Google's parameter is likewise a multiplier of an
# internal base rate.
BASE_LEARNING_RATE = 1e-4


@dataclass
class RewardConfig:
    """Training a pairwise (Bradley–Terry) reward model with LoRA."""

    preference_dataset: str = field(default="", metadata={
        "help": "preference pairs: canonical JSONL written by `rlhf validate`, or a user file in any "
                "format validation accepts (it is validated first); local path, gs:// URI or glob"})
    output_dir: str = field(default="", metadata={
        "help": "where the trained reward model, metrics, TensorBoard logs and checkpoints go (local, "
                "/gcs/ or gs://). Restarting with the same output_dir resumes from its last checkpoint"})
    large_model_reference: str = field(default="smollm2-135m-instruct", metadata={
        "help": "base model: an alias (smollm2-135m-instruct, llama-2-7b, ...), a local or gs:// "
                "directory in Hugging Face format, or a Hugging Face id (see `rlhf prepare-model --list-aliases`)"})
    eval_dataset: str = field(default="", metadata={
        "help": "optional evaluation data; rows with chosen/rejected responses are scored as extra "
                "held-out preference pairs (metrics under eval/)"})
    instruction: str = field(default="", metadata={
        "help": "instruction prepended to every prompt, as in Google's pipeline (a row's own wins)"})
    prompt_sequence_length: int = field(default=512, metadata={
        "help": "prompt tokens kept (the last ones: the end of a conversation matters most)"})
    target_sequence_length: int = field(default=64, metadata={
        "help": "response tokens kept (the first ones, EOS included)"})
    reward_model_train_steps: int = field(default=1000, metadata={
        "help": "optimizer steps"})
    reward_model_learning_rate_multiplier: float = field(default=1.0, metadata={
        "help": f"learning rate = multiplier × {BASE_LEARNING_RATE:g} (AdamW)"})
    batch_size: int = field(default=16, metadata={
        "help": "preference pairs per forward pass (each pair is chosen and rejected)"})
    gradient_accumulation_steps: int = field(default=4, metadata={
        "help": "forward passes per optimizer step; pairs per step = batch_size × this (64 by default, "
                "as Google's reward trainer)"})
    warmup_ratio: float = field(default=0.05, metadata={
        "help": "fraction of the steps over which the learning rate rises linearly from 0"})
    lr_scheduler: str = field(default="linear", metadata={
        "help": "after warmup: linear (decay to 0), cosine or constant"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "gradient norm clip; 0 disables clipping"})
    seed: int = field(default=42, metadata={
        "help": "seed for initialization, the held-out split, data order and dropout"})
    reward_lora_dim: int = field(default=4, metadata={
        "help": "LoRA rank (Google's reward trainer uses 4)"})
    lora_alpha: float = field(default=8.0, metadata={
        "help": "LoRA alpha (scale = alpha / rank)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(default_factory=list, metadata={
        "help": "module names to adapt (e.g. q_proj v_proj), or all-linear; empty: peft's default "
                "for the architecture (q_proj and v_proj for Llama)"})
    margin: float = field(default=0.0, metadata={
        "help": "Bradley–Terry margin m in -log σ(r_chosen − r_rejected − m); 0 is the plain loss"})
    center_rewards_coefficient: float = field(default=0.0, metadata={
        "help": "reward centering weight c, adds c·mean((r_chosen + r_rejected)²) (Eisenstein et al. "
                "2023, 'Helping or Herding'); 0.01 is a common value"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: less memory, ~30% slower"})
    share_prompt: bool = field(default=True, metadata={
        "help": "score chosen and rejected in one sequence that holds the prompt once (a block mask "
                "keeps them apart); off: two padded rows per pair"})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "fraction of the preference pairs held out for metrics (heldout/); 0 for none"})
    max_heldout_pairs: int = field(default=1000, metadata={
        "help": "cap on held-out pairs, so evaluation stays cheap on large datasets"})
    normalization_pairs: int = field(default=1024, metadata={
        "help": "training pairs scored after training for the reward mean/std saved with the model"})
    eval_every: int = field(default=100, metadata={
        "help": "steps between held-out evaluations (and always at the end)"})
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    checkpoint_every: int = field(default=100, metadata={
        "help": "steps between checkpoints (for resume after preemption); 0 disables them"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    save_merged_model: bool = field(default=False, metadata={
        "help": "also save the base model with the adapter merged in, under merged/"})
    tensorboard_dir: str = field(default="", metadata={
        "help": "TensorBoard event files (default: OUTPUT_DIR/tensorboard)"})
    device: str = field(default="", metadata={
        "help": "cpu, cuda, cuda:N or xla; empty picks CUDA when available"})
    dtype: str = field(default="auto", metadata={
        "help": "base weights: auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32; adapters train in fp32"})
    use_chat_template: Optional[bool] = field(default=None, metadata={
        "help": "render prompts with the tokenizer's chat template (default: when it has one)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow model code from the model directory (only for models you trust)"})

    def __post_init__(self):
        # Optional pipeline parameters arrive as None; "" means "not given" everywhere here.
        for name in ("preference_dataset", "output_dir", "eval_dataset", "instruction", "tensorboard_dir", "device"):
            if getattr(self, name) is None:
                setattr(self, name, "")
        self.lora_target_modules = list(self.lora_target_modules or [])

    @classmethod
    def from_dict(cls, values: dict) -> "RewardConfig":
        """Build from loosely typed values (a KFP ``dict`` parameter turns 32 into 32.0); unknown
        names and values of the wrong type are UserErrors."""
        return dataclass_from_loose_dict(cls, values, "reward")

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.reward_model_learning_rate_multiplier

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def check(self) -> None:
        """Raise UserError for settings that cannot work, before anything is loaded."""
        if not self.preference_dataset:
            raise UserError("preference_dataset is empty: give the preference data (JSONL path or gs:// URI)")
        if not self.output_dir:
            raise UserError("output_dir is empty: give where the reward model should be written")
        if not (self.large_model_reference or "").strip():
            raise UserError("large_model_reference is empty: give a model alias, directory or Hugging Face id")
        positive = ("prompt_sequence_length", "target_sequence_length", "reward_model_train_steps",
                    "batch_size", "gradient_accumulation_steps", "reward_lora_dim", "eval_every",
                    "log_every", "keep_checkpoints")
        for name in positive:
            value = getattr(self, name)
            if value is None or value < 1:
                raise UserError(f"{name} is {value}; it must be a positive integer")
        for name in ("checkpoint_every", "max_heldout_pairs", "normalization_pairs"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} is {getattr(self, name)}; it must be 0 or more")
        if not self.reward_model_learning_rate_multiplier > 0:
            raise UserError(f"reward_model_learning_rate_multiplier is "
                            f"{self.reward_model_learning_rate_multiplier}; it must be positive")
        if not 0 <= self.heldout_fraction < 1:
            raise UserError(f"heldout_fraction is {self.heldout_fraction}; it must be in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio is {self.warmup_ratio}; it must be in [0, 1)")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora_dropout is {self.lora_dropout}; it must be in [0, 1)")
        if self.lora_alpha <= 0:
            raise UserError(f"lora_alpha is {self.lora_alpha}; it must be positive")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise UserError(f"lr_scheduler is {self.lr_scheduler!r}; use linear, cosine or constant")
        if self.center_rewards_coefficient < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise UserError("center_rewards_coefficient, max_grad_norm and weight_decay must be 0 or more")
