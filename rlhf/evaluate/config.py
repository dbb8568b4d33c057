"""The evaluation step's configuration: one object behind the CLI flags, the KFP component and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.configargs import dataclass_from_loose_dict
from rlhf.errors import UserError


@dataclass
class EvalConfig:
    eval_dataset: str = field(default="", metadata={
        "help": "Eval prompts: canonical EvalExample JSONL (written by `rlhf validate`) or a user eval "
                "JSONL in any accepted format (validated and converted first). Local path, gs:// URI or glob."})
    model: str = field(default="", metadata={
        "help": "The tuned model to evaluate: a LoRA adapter directory (what `rlhf tune` writes) or a "
                "full model directory / model reference."})
    output_dir: str = field(default="", metadata={
        "help": "Where predictions, scores, metrics.json, report.html and summary.md are written "
                "(local path or gs:// URI)."})
    large_model_reference: str = field(default="", metadata={
        "help": "The base model to compare with (alias, directory, gs:// URI or Hugging Face id). Empty: "
                "the base recorded in the adapter when it resolves here, else smollm2-135m-instruct."})
    reward_model: str = field(default="", metadata={
        "help": "Trained reward model directory (from `rlhf train-reward`) to score base and tuned "
                "responses; empty to skip reward-model metrics."})
    training_history: str = field(default="", metadata={
        "help": "PPO training history: a metrics.jsonl file or a directory holding one, for the reward "
                "and KL curves in the report; empty for none."})
    instruction: str = field(default="", metadata={
        "help": "Instruction prepended to each prompt when a raw user dataset is converted (as Google's "
                "`instruction` parameter); canonical rows carry their own."})
    prompt_sequence_length: int = field(default=512, metadata={
        "help": "Maximum prompt tokens; longer prompts keep their last tokens (Google's parameter name)."})
    target_sequence_length: int = field(default=64, metadata={
        "help": "Maximum new tokens per response (Google's parameter name)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated (and scored) per batch."})
    sampling: bool = field(default=False, metadata={
        "help": "Sample responses instead of greedy decoding (greedy is what Google's bulk inferrer does)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --sampling)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (with --sampling)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling, 0 for off (with --sampling)."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    max_examples: int = field(default=0, metadata={
        "help": "Evaluate only the first N eval prompts; 0 for all."})
    num_report_samples: int = field(default=20, metadata={
        "help": "Prompts shown with base and tuned outputs side by side in the report."})
    judge: bool = field(default=True, metadata={
        "help": "Score responses with the independent judge (rlhf.judge), not the reward the policy optimized."})
    measure_kl: bool = field(default=True, metadata={
        "help": "Measure KL(tuned || base) along the tuned responses (one extra base forward pass)."})
    device: str = field(default="", metadata={
        "help": "cpu, cuda, cuda:N or xla; empty picks CUDA when available (or $RLHF_DEVICE)."})

    @classmethod
    def from_dict(cls, values: dict) -> "EvalConfig":
        """A config from a dict (the component's `options` merged with its parameters); unknown names
        and values of the wrong type are a UserError."""
        return dataclass_from_loose_dict(cls, values, "evaluation")

    def validate(self) -> None:
        """Raise UserError for values no run can use, before any model is loaded."""
        self.validate_inputs()
        if not self.output_dir:
            raise UserError("no output directory: give --output-dir")

    def validate_inputs(self) -> None:
        """Like `validate`, for a caller that chooses the output paths itself (the KFP component)."""
        if not self.eval_dataset:
            raise UserError("no eval dataset: give --eval-dataset (a JSONL file, gs:// URI or glob)")
        if not self.model:
            raise UserError("no model to evaluate: give --model (the tuned adapter or model directory)")
        for name in ("prompt_sequence_length", "target_sequence_length", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)} "
                                f"(--{name.replace('_', '-')})")
        for name in ("max_examples", "num_report_samples", "top_k"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)} "
                                f"(--{name.replace('_', '-')})")
        if self.sampling and self.temperature <= 0:
            raise UserError(f"temperature must be positive when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p} (--top-p)")
