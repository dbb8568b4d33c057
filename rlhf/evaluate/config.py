"""The evaluation step's configuration: one object behind the CLI flags, the KFP component and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from rlhf import settings
from rlhf.models import decoder_only_alias
from rlhf.settings import Settings, given, non_negative, positive, setting, within


@dataclass
class EvalConfig(Settings):
    STEP: ClassVar[str] = "evaluation"

    eval_dataset: str = setting(
        "", "Eval prompts: canonical EvalExample JSONL (written by `rlhf validate`) or a user eval JSONL in "
            "any accepted format (validated and converted first). Local path, gs:// URI or glob.",
        given("the eval JSONL (a file, gs:// URI or glob)"))
    model: str = setting(
        "", "The tuned model to evaluate: a LoRA adapter directory (what `rlhf tune` writes) or a full model "
            "directory / model reference.", given("the tuned adapter or model directory"))
    output_dir: str = setting(
        "", "Where predictions, scores, metrics.json, report.html and summary.md are written (local path or "
            "gs:// URI); a caller that chooses each output path itself leaves it empty.")
    large_model_reference: str = setting(
        "", "The base model to compare with (alias, directory, gs:// URI or Hugging Face id). Empty: the "
            "base recorded in the adapter when it resolves here, else smollm2-135m-instruct.",
        decoder_only_alias)
    sft_comparison: bool = setting(
        True, "When the base model is an SFT model (its directory holds the rlhf_sft.json that `rlhf sft` "
              "writes), evaluate three models on the same prompts: the original base it was fine-tuned "
              "from, the SFT model and the tuned policy; --no-sft-comparison compares tuned and its base only.")
    sft_base_model: str = setting(
        "", "The model the SFT base was fine-tuned from (alias, directory, gs:// URI or Hugging Face id): "
            "the base model is then taken as the SFT model and this as the original base, record or not. "
            "Empty: the one rlhf_sft.json records.", decoder_only_alias)
    reward_model: str = setting(
        "", "Trained reward model directory (from `rlhf train-reward`) to score base and tuned responses; "
            "empty to skip reward-model metrics.")
    positive_label: str = setting(
        "", "The class whose score is the reward when reward_model is a classifier: required for an existing "
            "Hugging Face sequence classifier; empty: a trained classifier reward model's own")
    eval_classifiers: list[str] = setting(
        help="Classifiers to score base and tuned responses with, each REF=LABEL: a classifier reward model "
             "(`rlhf train-reward --reward-model-type classifier`) or a Hugging Face sequence classifier "
             "(alias, local or gs:// directory), and the class whose probability is reported",
        default_factory=list)
    training_history: str = setting(
        "", "PPO training history: a metrics.jsonl file or a directory holding one, for the reward and KL "
            "curves in the report; empty for none.")
    instruction: str = settings.instruction()
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    batch_size: int = setting(8, "Prompts generated (and scored) per batch.", positive)
    sampling: bool = setting(False, "Sample responses instead of greedy decoding (greedy is what Google's "
                                    "bulk inferrer does).")
    temperature: float = setting(1.0, "Sampling temperature (with --sampling).", positive)
    top_p: float = setting(1.0, "Nucleus sampling threshold (with --sampling).", within(0, 1, low_open=True))
    top_k: int = setting(0, "Top-k sampling, 0 for off (with --sampling).", non_negative)
    seed: int = settings.seed()
    max_examples: int = setting(0, "Evaluate only the first N eval prompts; 0 for all.", non_negative)
    num_report_samples: int = setting(20, "Prompts shown with base and tuned outputs side by side in the "
                                          "report.", non_negative)
    judge: bool = setting(True, "Score responses with the independent judge (rlhf.judge), not the reward the "
                                "policy optimized.")
    measure_kl: bool = setting(True, "Measure KL(tuned || base) along the tuned responses (one extra base "
                                     "forward pass).")
    device: str = settings.device()
    dtype: str = settings.dtype()
    devices: Optional[int] = settings.devices()
    shard_base: bool = settings.shard_base()

    def cross_checks(self):
        from rlhf.evaluate.classifiers import parse
        from rlhf.errors import UserError
        try:
            parse(self.eval_classifiers)
        except UserError as e:
            yield settings.Problem("eval_classifiers", self.eval_classifiers, str(e))
        if self.sft_base_model and not self.sft_comparison:
            yield settings.Problem("sft_base_model", self.sft_base_model,
                                   "gives an SFT comparison that --no-sft-comparison turns off: drop one")
