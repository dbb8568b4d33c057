"""KFP component: an existing Hugging Face classifier as the reward (`reward_model`), in place of the
reward model training (`rlhf.reward.existing`)."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def existing_reward_model(reward_model: str, positive_label: str, reference: Output[Model]):
    """Check the classifier and its class (a directory's config.json, before any GPU is paid for)
    and write the `reference` artifact PPO and evaluation read in place of a trained reward model."""
    from rlhf.pipeline_settings import EXISTING_REWARD_MODEL
    from rlhf.reward.existing import check_classifier, write_reference

    config = EXISTING_REWARD_MODEL.build(EXISTING_REWARD_MODEL.settings_of(locals())).validate(name=str)
    check_classifier(config.reward_model, config.positive_label)
    write_reference(reference.path, config.reward_model, config.positive_label)
    reference.metadata["reward_model"] = config.reward_model
