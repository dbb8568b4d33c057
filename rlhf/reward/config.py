"""The reward step's settings: one dataclass behind `rlhf train-reward` flags, the
`train_reward_model` component's parameters and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Optional

from rlhf import settings
from rlhf.models import DEFAULT_MODEL, decoder_only_alias
from rlhf.settings import Problem, Settings, given, non_negative, one_of, positive, setting, within

# The learning rate that `reward_model_learning_rate_multiplier` scales: the usual AdamW rate for a
# LoRA reward model (TRL's RewardConfig default); Google's parameter is likewise a multiplier of an
# internal base rate.
BASE_LEARNING_RATE = 1e-4


@dataclass
class RewardConfig(Settings):
    """Training a reward model with LoRA: pairwise (Bradley–Terry, from preference pairs) or a
    classifier (cross-entropy, from labeled responses) whose positive class gives the reward."""

    STEP: ClassVar[str] = "reward"
    # Settings a restart may change without changing the result so far (rlhf.rundir compares the rest).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard_dir", "device",
        "devices", "shard_base", "save_merged_model", "preference_dataset", "eval_dataset", "labeled_dataset",
        "gradient_checkpointing"})  # recomputes the same activations (the memory plan may turn it on)

    reward_model_type: str = setting(
        "pairwise", "pairwise: a Bradley–Terry model trained on preference_dataset; classifier: a "
                    "sequence classifier trained on labeled_dataset, the positive class's score is the reward",
        one_of("pairwise", "classifier"))
    preference_dataset: str = setting(
        "", "preference pairs: canonical JSONL written by `rlhf validate`, or a user file in any format "
            "validation accepts (it is validated first); local path, gs:// URI or glob (required with "
            "reward_model_type pairwise)")
    labeled_dataset: str = setting(
        "", "labeled responses (classifier only): JSONL rows {input_text or messages, output_text, label}, "
            "label an integer class or a class name; canonical or a user file (validated first)")
    positive_label: str = setting(
        "1", "classifier only: the class whose score is the reward (a class name, or the integer class "
             "as text)")
    class_weighting: str = setting(
        "balanced", "classifier only: balanced weighs each class's cross-entropy by the inverse of its "
                    "share of the training examples (n / (classes × n_class)), so a rare class is not "
                    "ignored; none: plain cross-entropy", one_of("balanced", "none"))
    reward_from: str = setting(
        "logit", "classifier only: the reward is the positive class's logit or its log-probability "
                 "(log-softmax over the classes)", one_of("logit", "logprob"))
    output_dir: str = setting(
        "", "where the trained reward model, metrics, TensorBoard logs and checkpoints go (local, /gcs/ "
            "or gs://). Restarting with the same output_dir resumes from its last checkpoint",
        given("where the reward model should be written"))
    large_model_reference: str = setting(
        DEFAULT_MODEL, "base model: an alias (smollm2-135m-instruct, llama-2-7b, ...), a local or gs:// "
                       "directory in Hugging Face format, or a Hugging Face id (see `rlhf prepare-model "
                       "--list-aliases`)", settings.all_of(given("a model alias, directory or Hugging Face id"), decoder_only_alias))
    eval_dataset: str = setting("", "optional evaluation data; rows with chosen/rejected responses are "
                                    "scored as extra held-out preference pairs (metrics under eval/)")
    instruction: str = settings.instruction()
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    reward_model_train_steps: int = setting(1000, "optimizer steps", positive)
    reward_model_learning_rate_multiplier: float = setting(
        1.0, f"learning rate = multiplier × {BASE_LEARNING_RATE:g} (AdamW)", positive)
    batch_size: int = setting(16, "preference pairs per forward pass (each pair is chosen and rejected); "
                                  "on N devices each forward pass holds batch_size/N pairs on each",
                              positive)
    gradient_accumulation_steps: int = setting(
        4, "forward passes per optimizer step; pairs per step = batch_size × this (64 by default, as "
           "Google's reward trainer), whatever the number of devices: N devices split every step's "
           "pairs N ways, so a run on N devices trains as a run on one (up to rounding)", positive)
    warmup_ratio: float = setting(0.05, "fraction of the steps over which the learning rate rises linearly "
                                        "from 0", within(0, 1, high_open=True))
    lr_scheduler: str = setting("linear", "after warmup: linear (decay to 0), cosine or constant",
                                one_of("linear", "cosine", "constant"))
    weight_decay: float = setting(0.0, "AdamW weight decay", non_negative)
    max_grad_norm: float = setting(1.0, "gradient norm clip; 0 disables clipping", non_negative)
    seed: int = settings.seed()
    reward_lora_dim: int = setting(4, "LoRA rank (Google's reward trainer uses 4)", positive)
    lora_alpha: float = setting(8.0, "LoRA alpha (scale = alpha / rank)", positive)
    lora_dropout: float = setting(0.05, "dropout on the LoRA input", within(0, 1, high_open=True))
    lora_target_modules: list[str] = setting(
        help="module names to adapt (e.g. q_proj v_proj), or all-linear; empty: peft's default for the "
             "architecture (q_proj and v_proj for Llama)", default_factory=list)
    margin: float = setting(0.0, "Bradley–Terry margin m in -log σ(r_chosen − r_rejected − m); 0 is the "
                                 "plain loss")
    center_rewards_coefficient: float = setting(
        0.0, "reward centering weight c, adds c·mean((r_chosen + r_rejected)²) (Eisenstein et al. 2023, "
             "'Helping or Herding'); 0.01 is a common value", non_negative)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, "
                                                  "~30% slower")
    share_prompt: bool = setting(True, "score chosen and rejected in one sequence that holds the prompt once "
                                       "(a block mask keeps them apart); off: two padded rows per pair")
    heldout_fraction: float = setting(0.1, "fraction of the preference pairs (classifier: of each class's examples) held out for metrics "
                                           "(heldout/); 0 for none", within(0, 1, high_open=True))
    max_heldout_pairs: int = setting(1000, "cap on held-out pairs, so evaluation stays cheap on large "
                                           "datasets", non_negative)
    normalization_pairs: int = setting(1024, "training pairs scored after training for the reward mean/std "
                                             "saved with the model", non_negative)
    eval_every: int = setting(100, "steps between held-out evaluations (and always at the end)", positive)
    log_every: int = setting(10, "steps between log lines", positive)
    checkpoint_every: int = setting(100, "steps between checkpoints (for resume after preemption); 0 "
                                         "disables them", non_negative)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", positive)
    save_merged_model: bool = setting(False, "also save the base model with the adapter merged in, under "
                                             "merged/")
    tensorboard_dir: str = setting("", "TensorBoard event files (default: OUTPUT_DIR/tensorboard)")
    device: str = settings.device()
    devices: Optional[int] = settings.devices()
    shard_base: bool = settings.shard_base()
    dtype: str = settings.dtype()
    use_chat_template: Optional[bool] = settings.use_chat_template()
    trust_remote_code: bool = setting(False, "allow model code from the model directory (only for models "
                                             "you trust)")

    def cross_checks(self) -> Iterable[Problem]:
        if self.dtype == "fp16":
            yield Problem("dtype", self.dtype, settings.FP16_REFUSED)
        if not self.positive_label.strip():
            yield Problem("positive_label", self.positive_label, "is empty: name the class whose score is "
                                                                 "the reward")

    def problems(self, inputs: bool = True) -> list[Problem]:
        """As every config, plus the dataset the reward model type needs (an input: `inputs=False`
        leaves it out)."""
        found = super().problems(inputs)
        dataset = "labeled_dataset" if self.classifier else "preference_dataset"
        if inputs and not str(getattr(self, dataset)).strip():
            found.insert(0, Problem(dataset, "", f"is required with reward_model_type "
                                                 f"{self.reward_model_type}: give the "
                                                 f"{'labeled' if self.classifier else 'preference'} JSONL "
                                                 "(path or gs:// URI)"))
        return found

    @property
    def classifier(self) -> bool:
        return self.reward_model_type == "classifier"

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.reward_model_learning_rate_multiplier

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps
