"""KFP component: the AI-feedback labels stage (`rlhf.label`), after validation."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ai_feedback_labels(
    validated_preferences: Input[Dataset],
    preference_data: Output[Dataset],
    ranked_labels: Output[Dataset],
    ai_feedback: bool,
    prompt_dataset: str,
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    seed: int,
    options: dict,
    instruction: Optional[str] = None,
) -> bool:
    """With `ai_feedback` and no preference pairs: sample `candidates` responses per prompt, rank
    them with a judge (the bundled constitution unless `options` names one: any `rlhf label`
    setting) into `ranked_labels` and write their pairs, validated, as `preference_data`; returns
    True. Otherwise hands the validated preference pairs on unchanged and returns False.
    One always-running CPU step rather than a dsl.If branch: its output must exist on both paths,
    and kfp's local runner cannot join two artifacts with dsl.OneOf."""
    from rlhf.label import label_or_hand_on
    from rlhf.pipeline_settings import LABELING

    return label_or_hand_on(validated_preferences.path, preference_data.path, ranked_labels.path, ai_feedback,
                            LABELING.build(LABELING.settings_of(locals()), options))
