"""`PPOConfig`: every setting of the PPO step, shared by `rlhf tune`, the KFP component and tests.

Names Google's `rlhf_pipeline` uses keep their names and defaults (`reinforcement_learning_rate_multiplier`,
`reinforcement_learning_train_steps`, `kl_coeff`, `prompt_sequence_length`, `target_sequence_length`,
`instruction`, `large_model_reference`); the rest are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rlhf.configargs import dataclass_from_loose_dict
from rlhf.errors import UserError

# Kept here (not imported from the torch modules) so `rlhf tune --help` does not load torch.
ESTIMATORS = ("k1", "k3")
VALUE_MODELS = ("head", "adapter")

# The learning rate `reinforcement_learning_rate_multiplier` scales (LoRA parameters and value head,
# AdamW). LoRA needs a larger rate than full fine-tuning: 1e-5 for full models is typical, 1e-4 for
# LoRA; PPO wants the low end of that, hence 3e-5.
BASE_LEARNING_RATE = 3e-5


@dataclass
class PPOConfig:
    # -- inputs and outputs ------------------------------------------------------------------
    prompt_dataset: str = field(default="", metadata={
        "help": "Prompts: the canonical prompts JSONL written by `rlhf validate` (local, gs:// or /gcs/; "
                "globs allowed)."})
    reward_model: str = field(default="", metadata={
        "help": "Directory of the trained reward model (written by `rlhf train-reward`)."})
    output_dir: str = field(default="", metadata={
        "help": "Where the policy adapter, metrics, samples and checkpoints go. A run restarted with the "
                "same directory resumes from its last checkpoint."})
    large_model_reference: Optional[str] = field(default=None, metadata={
        "help": "The policy's base model (alias, directory, gs:// or Hugging Face id). Default: the reward "
                "model's base model, so both share one copy of the weights."})
    # -- Google's rlhf_pipeline parameters ----------------------------------------------------
    reinforcement_learning_rate_multiplier: float = field(default=1.0, metadata={
        "help": f"Multiplies the base learning rate ({BASE_LEARNING_RATE:g})."})
    reinforcement_learning_train_steps: int = field(default=1000, metadata={
        "help": "PPO steps; each samples `batch_size` episodes and runs `ppo_epochs` passes over them."})
    kl_coeff: float = field(default=0.1, metadata={
        "help": "Weight of the per-token KL penalty against the frozen reference model (initial value "
                "when adaptive). 0 disables the penalty and skips the reference pass."})
    prompt_sequence_length: int = field(default=512, metadata={
        "help": "Prompts longer than this many tokens keep their last tokens."})
    target_sequence_length: int = field(default=64, metadata={
        "help": "Most tokens generated per response."})
    instruction: Optional[str] = field(default=None, metadata={
        "help": "Text prepended to every prompt's first user turn (overrides the dataset's)."})
    # -- batch and schedule -------------------------------------------------------------------
    batch_size: int = field(default=16, metadata={"help": "Episodes (prompts) sampled per PPO step."})
    mini_batch_size: int = field(default=8, metadata={
        "help": "Episodes per optimizer step inside a PPO epoch; must divide batch_size."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Split each minibatch into this many micro-batches (less memory, same update)."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    seed: int = field(default=0, metadata={"help": "Seed of prompt order, sampling and initialisation."})
    # -- sampling -----------------------------------------------------------------------------
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (> 0)."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0: all)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1: off)."})
    missing_eos_penalty: float = field(default=1.0, metadata={
        "help": "Subtracted from the (normalized) score of a response that reaches target_sequence_length "
                "without EOS (0: no penalty)."})
    # -- objective ----------------------------------------------------------------------------
    kl_estimator: str = field(default="k1", metadata={
        "help": f"Per-token KL estimator: {' or '.join(ESTIMATORS)} (k3 is non-negative, lower variance)."})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "Adapt the KL coefficient toward kl_target (Ziegler et al. 2019)."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL (nats per response) when adaptive."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive controller horizon (episodes)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO policy ratio clip."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value prediction clip."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss weight (c1)."})
    ent_coef: float = field(default=0.0, metadata={"help": "Entropy bonus weight (c2)."})
    whiten_rewards: bool = field(default=False, metadata={
        "help": "Whiten per-token rewards (scale only) before GAE; advantages are always whitened."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient norm clip (0: off)."})
    # -- model --------------------------------------------------------------------------------
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank of the policy adapter."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA dropout (0: the rollout and the update see the same function)."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                           metadata={"help": "Modules the policy LoRA adapts."})
    value_model: str = field(default="head", metadata={
        "help": "Value function: 'head' (linear head on the policy trunk; fastest) or 'adapter' "
                "(a second LoRA adapter with its own head)."})
    use_chat_template: Optional[bool] = field(default=None, metadata={
        "help": "Render prompts with the tokenizer's chat template (default: when it has one)."})
    # -- run ----------------------------------------------------------------------------------
    device: Optional[str] = field(default=None, metadata={
        "help": "cpu, cuda, cuda:N or xla (default: RLHF_DEVICE, else CUDA when present, else CPU)."})
    dtype: str = field(default="auto", metadata={"help": "fp32, bf16, fp16 or auto (bf16 on GPU/TPU)."})
    checkpoint_every: int = field(default=50, metadata={
        "help": "Save a checkpoint (and sample generations) every this many steps (0: only at the end)."})
    sample_count: int = field(default=8, metadata={
        "help": "Prompts whose generations are written to samples/step-N.jsonl at each checkpoint."})
    save_merged_model: bool = field(default=False, metadata={
        "help": "Also write the policy merged into the base, in Hugging Face format, for serving."})
    log_every: int = field(default=1, metadata={"help": "Log line every this many steps."})

    @classmethod
    def from_dict(cls, values: dict) -> "PPOConfig":
        """Build from loosely typed values (a KFP ``dict`` parameter turns 32 into 32.0); unknown
        names and values of the wrong type are UserErrors."""
        return dataclass_from_loose_dict(cls, values, "PPO")

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.reinforcement_learning_rate_multiplier

    def validate(self) -> "PPOConfig":
        """Raise UserError naming the flag for settings that cannot work."""
        def bad(name: str, why: str):
            raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {why}")

        for name in ("reinforcement_learning_train_steps", "prompt_sequence_length",
                     "target_sequence_length", "batch_size", "mini_batch_size", "ppo_epochs",
                     "gradient_accumulation_steps", "lora_rank", "kl_horizon", "log_every"):
            if getattr(self, name) <= 0:
                bad(name, "must be a positive integer")
        for name in ("checkpoint_every", "sample_count", "top_k"):
            if getattr(self, name) < 0:
                bad(name, "must be 0 or more")
        if self.batch_size % self.mini_batch_size:
            bad("mini_batch_size", f"must divide --batch-size {self.batch_size}")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            bad("gradient_accumulation_steps", f"must divide --mini-batch-size {self.mini_batch_size}")
        if self.reinforcement_learning_rate_multiplier <= 0:
            bad("reinforcement_learning_rate_multiplier", "must be positive")
        if self.kl_coeff < 0:
            bad("kl_coeff", "must be 0 or more (0 turns the KL penalty off)")
        if self.adaptive_kl and self.kl_coeff == 0:
            bad("kl_coeff", "an adaptive KL controller needs a positive starting coefficient")
        if self.kl_estimator not in ESTIMATORS:
            bad("kl_estimator", f"use one of {', '.join(ESTIMATORS)}")
        if self.value_model not in VALUE_MODELS:
            bad("value_model", f"use one of {', '.join(VALUE_MODELS)}")
        if self.temperature <= 0:
            bad("temperature", "must be positive")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            bad("gamma" if not 0 <= self.gamma <= 1 else "lam", "must be in [0, 1]")
        if self.kl_target <= 0:
            bad("kl_target", "must be positive")
        for name in ("cliprange", "cliprange_value"):
            if getattr(self, name) <= 0:
                bad(name, "must be positive")
        for name in ("vf_coef", "ent_coef", "max_grad_norm", "lora_dropout", "missing_eos_penalty"):
            if getattr(self, name) < 0:
                bad(name, "must be 0 or more")
        if not self.lora_target_modules:
            bad("lora_target_modules", "give at least one module name (or all-linear)")
        return self

    @property
    def target_modules(self):
        """The peft target_modules value (`all-linear` is peft's shorthand)."""
        mods = list(self.lora_target_modules)
        return mods[0] if mods == ["all-linear"] else mods
