"""`train_reward_model(config)`: the whole reward step, from preference pairs to a reward model
directory (layout in ``rlhf.reward``). The CLI (`rlhf train-reward`), the KFP component and the
benchmarks call this. Shaped like the PPO step (``rlhf.ppo.run``), in four parts:

- ``rlhf.reward.setup``: seed, data (validated if needed), tokenizer, held-out split, LoRA model,
  optimizer and schedule;
- ``rlhf.rundir``: the output directory (staged locally when on gs://), resume from its newest
  checkpoint (refused when the settings differ);
- ``rlhf.reward.trainer``: the Bradley–Terry loop with evaluations, checkpoints and the non-finite
  guard;
- ``rlhf.reward.outputs``: the model files, then ``reward_model.json`` last.

On several devices (``--devices``, ``rlhf.launch``) every process runs this function; rank 0 alone
writes (see ``rlhf.reward.trainer`` for how the work is split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rlhf import distributed, storage
from rlhf.reward import outputs
from rlhf.reward.config import RewardConfig
from rlhf.reward.setup import prepare, unsharded_copy
from rlhf.reward.trainer import RewardTrainer, normalization_stats
from rlhf.rundir import RunDir


@dataclass
class RewardResult:
    output_dir: str
    metrics: dict = field(default_factory=dict)     # final scalars and confusion matrices
    normalization: dict = field(default_factory=dict)
    steps: int = 0
    resumed_from: Optional[int] = None
    roc: dict = field(default_factory=dict)          # prefix -> (fpr, tpr, thresholds)
    labels: list = field(default_factory=list)       # a classifier's class names (confusion-matrix order)


def train_reward_model(config: RewardConfig) -> RewardResult:
    """Train (or resume) and write the reward model to ``config.output_dir``."""
    config.validate()
    parts = prepare(config)  # data first: a bad file fails before a model is loaded
    run = RunDir(config.output_dir, prefix="rlhf-reward-")
    if config.classifier:
        from rlhf.reward.classifier import ClassifierTrainer
        trainer = ClassifierTrainer(config, parts, run, parts.classes, parts.positive)
    else:
        trainer = RewardTrainer(config, parts, run)
    resumed_from = trainer.resume() or None
    final = trainer.train()

    # A classifier's reward is its positive logit (or log-probability) as it stands.
    norm = ({"mean": 0.0, "std": 1.0, "pairs": 0} if config.classifier else
            normalization_stats(parts.model, parts.collate, parts.train_set, config))
    final["reward/normalization_mean"], final["reward/normalization_std"] = norm["mean"], norm["std"]
    if distributed.is_main():  # several processes (rlhf.launch): rank 0 writes, the others are done
        info = outputs.model_info(config, parts.model, parts.use_chat_template, norm, final, parts.classes)
        with run.publish(outputs.INFO_FILE, info) as out:
            model = (unsharded_copy(config, parts.model, parts.tokenizer, parts.classes or None)
                     if parts.sharded else parts.model)
            outputs.write_model(model, parts.tokenizer, out, merged=config.save_merged_model,
                                base_model=config.large_model_reference)
            storage.write_json(storage.join(out, "metrics.json"), final)
    distributed.shutdown()
    return RewardResult(output_dir=config.output_dir, metrics=final, normalization=norm,
                        steps=config.reward_model_train_steps, resumed_from=resumed_from, roc=trainer.roc,
                        labels=list(parts.classes))
