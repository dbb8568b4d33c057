"""KFP component: AI-feedback preference labels when the pipeline is given no preference dataset
(`rlhf.label`)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def label_preferences(
    preference_dataset: str,
    ai_feedback: bool,
    prompt_dataset: str,
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    seed: int,
    options: dict,
    labeled_preferences: Output[Dataset],
    instruction: Optional[str] = None,
) -> bool:
    """With `ai_feedback` and no `preference_dataset`: sample `candidates` responses per prompt and rank
    them with a judge (the bundled constitution unless `options` names one: any `rlhf label` setting,
    e.g. {"candidates": 4, "max_prompts": 2000, "judge": "my_judges:vertex_judge"}) into
    `labeled_preferences` (ranked JSONL); returns True.
    Otherwise writes an empty file and returns False (validation then reads `preference_dataset`).
    One always-running step rather than a dsl.If branch: its output artifact must exist on both paths,
    and kfp's local runner cannot join branches with dsl.OneOf."""
    from rlhf import storage
    from rlhf.errors import UserError
    from rlhf.label import label
    from rlhf.pipeline_settings import LABELING

    if (preference_dataset or "").strip() or not ai_feedback:
        storage.write_text(labeled_preferences.path, "")
        return False
    config = LABELING.build({**LABELING.settings_of(locals()), "output": labeled_preferences.path}, options)
    stats = label(config)
    print(stats.to_dict())
    if not stats.rows:
        raise UserError(f"AI feedback labelled none of {stats.prompts} prompts (candidates identical, empty or "
                        f"tied on the judge's score: {stats.to_dict()}); sample more candidates or at a higher "
                        f"temperature with ai_feedback_options, or give a preference_dataset")
    return True
