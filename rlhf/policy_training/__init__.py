"""What the DPO and SFT steps share: both train the LoRA policy (``rlhf.ppo.policy.SharedBaseModel``)
on fixed data, so one shape serves both (as nanochat's ``checkpoint_manager`` serves every script).

Modules, one concept each: ``rows`` (prompts and responses as policy rows, each row's response
log-prob), ``trainer`` (``PolicyTrainer``: the batch plan, the step loop, sharding over processes,
resume and checkpoints; a step subclasses it with its loss, metrics and held-out evaluation),
``fields`` (the settings both configs declare alike), ``setup`` (tokenizer, policy, run directory).
"""
