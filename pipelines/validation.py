"""Stage 1: validate the datasets before any accelerator is paid for, and write them in the canonical
format every later stage reads."""

import functools
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Dataset

from components.conditions import is_given
from components.label import label_preferences
from components.validate import validate_data
from pipelines.targets import request_small_machine, with_hub_token_secret

ValidationOutputs = NamedTuple(
    "ValidationOutputs",
    preference_data=Dataset,
    prompt_data=Dataset,
    eval_data=Dataset,
    labeled_data=Dataset,  # with a labeled_dataset only (a classifier reward model's)
    sft_data=Dataset,  # with an sft_dataset only (supervised fine-tuning's demonstrations)
    has_eval_dataset=bool,
)


@functools.lru_cache(maxsize=None)
def validation_stage(target: str):
    @dsl.pipeline(name="validate-inputs",
                  description="Checks every line of the datasets and writes them in the canonical format.")
    def pipeline(
        preference_dataset: str,
        prompt_dataset: str,
        large_model_reference: str,
        prompt_sequence_length: int,
        target_sequence_length: int,
        accelerator_type: str,
        seed: int,
        ai_feedback: bool,
        ai_feedback_options: dict,
        eval_dataset: Optional[str] = None,
        labeled_dataset: Optional[str] = None,
        sft_dataset: Optional[str] = None,
        instruction: Optional[str] = None,
    ) -> ValidationOutputs:
        # Always runs (a no-op unless ai_feedback and no preference dataset): see its docstring.
        labels = label_preferences(
            preference_dataset=preference_dataset,
            ai_feedback=ai_feedback,
            prompt_dataset=prompt_dataset,
            instruction=instruction,
            large_model_reference=large_model_reference,
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
            seed=seed,
            options=ai_feedback_options,
        ).set_display_name("AI feedback labels (when no preference dataset)")
        request_small_machine(with_hub_token_secret(labels), target)
        checked = validate_data(
            preference_dataset=preference_dataset,
            prompt_dataset=prompt_dataset,
            eval_dataset=eval_dataset,
            labeled_dataset=labeled_dataset,
            sft_dataset=sft_dataset,
            instruction=instruction,
            tokenizer=large_model_reference,  # token counts and truncation in the stats
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
            accelerator_type=accelerator_type,  # refused here when it asks for what cannot run
            labeled_preferences=labels.outputs["labeled_preferences"],
            use_labeled_preferences=labels.outputs["Output"],
        ).set_display_name("Validate datasets")
        request_small_machine(with_hub_token_secret(checked), target)  # it loads the tokenizer
        eval_given = is_given(value=eval_dataset).set_display_name("Eval dataset given?")
        request_small_machine(eval_given, target)
        return ValidationOutputs(
            preference_data=checked.outputs["preference_data"],
            prompt_data=checked.outputs["prompt_data"],
            eval_data=checked.outputs["eval_data"],
            labeled_data=checked.outputs["labeled_data"],
            sft_data=checked.outputs["sft_data"],
            has_eval_dataset=eval_given.output,
        )

    return pipeline
