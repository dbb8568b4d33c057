"""`PPOConfig`: every setting of the PPO step, shared by `rlhf tune`, the KFP component and tests.

Names Google's `rlhf_pipeline` uses keep their names and defaults (`reinforcement_learning_rate_multiplier`,
`reinforcement_learning_train_steps`, `kl_coeff`, `prompt_sequence_length`, `target_sequence_length`,
`instruction`, `large_model_reference`); the rest are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Optional

from rlhf import settings
from rlhf.models import decoder_only_alias
from rlhf.settings import Problem, Settings, given, non_negative, one_of, positive, setting, within

# Kept here (not imported from the torch modules) so `rlhf tune --help` does not load torch.
ESTIMATORS = ("k1", "k3")
VALUE_MODELS = ("head", "adapter")

# The learning rate `reinforcement_learning_rate_multiplier` scales (LoRA parameters and value head,
# AdamW). LoRA needs a larger rate than full fine-tuning: 1e-5 for full models is typical, 1e-4 for
# LoRA; PPO wants the low end of that, hence 3e-5.
BASE_LEARNING_RATE = 3e-5


@dataclass
class PPOConfig(Settings):
    STEP: ClassVar[str] = "PPO"
    # Settings a restart may change without changing the result so far (rlhf.rundir compares the rest).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "reinforcement_learning_train_steps", "checkpoint_every", "sample_count",
        "save_merged_model", "log_every", "device", "devices", "shard_base", "prompt_dataset", "reward_model",
        # micro-batching splits the same minibatch (the memory plan may pick it per machine)
        "gradient_accumulation_steps"})

    # -- inputs and outputs ------------------------------------------------------------------
    prompt_dataset: str = setting("", "Prompts: the canonical prompts JSONL written by `rlhf validate`, or a "
                                      "user prompt file (local, gs:// or /gcs/; globs allowed).",
                                  given("the prompts JSONL"))
    reward_model: str = setting("", "Directory of the trained reward model (written by `rlhf train-reward`).",
                                given("the directory `rlhf train-reward` wrote"))
    positive_label: str = setting(
        "", "The class whose score is the reward when reward_model is a classifier: required for an existing "
            "Hugging Face sequence classifier; empty: a trained classifier reward model's own")
    output_dir: str = setting("", "Where the policy adapter, metrics, samples and checkpoints go. A run "
                                  "restarted with the same directory resumes from its last checkpoint.",
                              given("where the policy adapter and metrics go"))
    large_model_reference: str = setting("", "The policy's base model (alias, directory, gs:// or Hugging "
                                             "Face id). Empty: the reward model's base model, so both share "
                                             "one copy of the weights.", decoder_only_alias)
    # -- Google's rlhf_pipeline parameters ----------------------------------------------------
    reinforcement_learning_rate_multiplier: float = setting(
        1.0, f"Multiplies the base learning rate ({BASE_LEARNING_RATE:g}).", positive)
    reinforcement_learning_train_steps: int = setting(
        1000, "PPO steps; each samples `batch_size` episodes and runs `ppo_epochs` passes over them.", positive)
    kl_coeff: float = setting(0.1, "Weight of the per-token KL penalty against the frozen reference model "
                                   "(initial value when adaptive). 0 disables the penalty and skips the "
                                   "reference pass.", non_negative)
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    instruction: str = settings.instruction()
    # -- batch and schedule -------------------------------------------------------------------
    batch_size: int = setting(16, "Episodes (prompts) sampled per PPO step, over all devices: N devices "
                                  "sample batch_size/N each (it must divide by N).", positive)
    mini_batch_size: int = setting(8, "Episodes per optimizer step inside a PPO epoch, over all devices; must "
                                      "divide batch_size.", positive)
    gradient_accumulation_steps: int = setting(
        1, "Split each minibatch into this many micro-batches (less memory, same update).", positive)
    ppo_epochs: int = setting(4, "Passes over each rollout batch.", positive)
    seed: int = settings.seed()
    # -- sampling -----------------------------------------------------------------------------
    temperature: float = setting(0.7, "Sampling temperature.", positive)
    top_k: int = setting(0, "Sample among the k most likely tokens (0: all).", non_negative)
    top_p: float = setting(1.0, "Nucleus sampling mass (1: off).", within(0, 1, low_open=True))
    missing_eos_penalty: float = setting(
        1.0, "Subtracted from the (normalized) score of a response that reaches target_sequence_length "
             "without EOS (0: no penalty).", non_negative)
    # -- objective ----------------------------------------------------------------------------
    kl_estimator: str = setting("k1", f"Per-token KL estimator: {' or '.join(ESTIMATORS)} (k3 is non-negative, "
                                      f"lower variance).", one_of(*ESTIMATORS))
    adaptive_kl: bool = setting(False, "Adapt the KL coefficient toward kl_target (Ziegler et al. 2019).")
    kl_target: float = setting(6.0, "Target KL (nats per response) when adaptive.", positive)
    kl_horizon: int = setting(10000, "Adaptive controller horizon (episodes).", positive)
    gamma: float = setting(1.0, "Discount factor.", within(0, 1))
    lam: float = setting(0.95, "GAE lambda.", within(0, 1))
    cliprange: float = setting(0.2, "PPO policy ratio clip.", positive)
    cliprange_value: float = setting(0.2, "Value prediction clip.", positive)
    vf_coef: float = setting(0.1, "Value loss weight (c1).", non_negative)
    ent_coef: float = setting(0.0, "Entropy bonus weight (c2).", non_negative)
    whiten_rewards: bool = setting(False, "Whiten per-token rewards (scale only) before GAE; advantages are "
                                          "always whitened.")
    max_grad_norm: float = setting(1.0, "Gradient norm clip (0: off).", non_negative)
    # -- model --------------------------------------------------------------------------------
    lora_rank: int = setting(8, "LoRA rank of the policy adapter.", positive)
    lora_alpha: float = setting(16.0, "LoRA alpha.", positive)
    lora_dropout: float = setting(0.0, "LoRA dropout, in the update's passes only (rollouts, old log-probs, "
                                       "reference and reward passes run without it).",
                                  within(0, 1, high_open=True))
    lora_target_modules: list[str] = setting(
        help="Modules the policy LoRA adapts (or all-linear).", check=settings.not_empty,
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    value_model: str = setting("head", "Value function: 'head' (linear head on the policy trunk; fastest) or "
                                       "'adapter' (a second LoRA adapter with its own head).",
                               one_of(*VALUE_MODELS))
    use_chat_template: Optional[bool] = settings.use_chat_template()
    # -- run ----------------------------------------------------------------------------------
    device: str = settings.device()
    devices: Optional[int] = settings.devices()
    shard_base: bool = settings.shard_base()
    dtype: str = settings.dtype()
    checkpoint_every: int = setting(50, "Save a checkpoint (and sample generations) every this many steps "
                                        "(0: only at the end).", non_negative)
    sample_count: int = setting(8, "Prompts whose generations are written to samples/step-N.jsonl at each "
                                   "checkpoint.", non_negative)
    save_merged_model: bool = setting(False, "Also write the policy merged into the base, in Hugging Face "
                                             "format, for serving.")
    log_every: int = setting(1, "Log line every this many steps.", positive)

    def cross_checks(self) -> Iterable[Problem]:
        if self.batch_size % self.mini_batch_size:
            yield Problem("mini_batch_size", self.mini_batch_size, f"must divide batch_size {self.batch_size}")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            yield Problem("gradient_accumulation_steps", self.gradient_accumulation_steps,
                          f"must divide mini_batch_size {self.mini_batch_size}")
        if self.adaptive_kl and self.kl_coeff == 0:
            yield Problem("kl_coeff", self.kl_coeff, "an adaptive KL controller needs a positive starting "
                                                     "coefficient")
        if self.dtype == "fp16":
            yield Problem("dtype", self.dtype, settings.FP16_REFUSED)

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.reinforcement_learning_rate_multiplier

    @property
    def target_modules(self):
        """The peft target_modules value (`all-linear` is peft's shorthand)."""
        mods = list(self.lora_target_modules)
        return mods[0] if mods == ["all-linear"] else mods
