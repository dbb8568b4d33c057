"""`tune(config)`: the whole PPO step, from a prompt dataset and a trained reward model to a policy
adapter. The CLI (`rlhf tune`) and the KFP component both call this. Setup is here (reward model,
tokenizer, prompts, policy); the run directory (staged locally when on gs://, resume, the summary
written last) is `rlhf.rundir`'s; the loop is `rlhf.ppo.trainer`; the files are `rlhf.ppo.outputs`.
The reward step has the same shape (`rlhf.reward.train`).

Devices, chosen at run time (`--device`, else `RLHF_DEVICE`, else CUDA when present, else CPU;
`rlhf.models.pick_device`):
- CPU: fp32.
- CUDA: bf16 weights (fp32 adapters, value head and softmax statistics) with SDPA attention.
- TPU: refused (`rlhf.models.TPU_REFUSED`): the torch_xla path could not be run and tested here.
- Several GPUs: every visible GPU by default, or `--devices N` (`rlhf.launch` starts one process
  per device; data parallel, see `rlhf.ppo.distributed`). Under an outer `torchrun` the step just runs.
  The frozen base is sharded over them (FSDP2) when the memory plan says it does not fit one, or with
  `--shard-base`.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from rlhf import storage
from rlhf.ppo import distributed
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.outputs import SUMMARY_FILE, OutputLayout, save_merged_model, save_policy_adapter
from rlhf.ppo.policy import SharedBaseModel, parameter_count
from rlhf.ppo.prompts import load_prompts
from rlhf.ppo.reward import build_reward
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rundir import RunDir

log = logging.getLogger(__name__)


def tune(config: PPOConfig) -> dict[str, float]:
    """Run PPO as configured; returns the final metrics. Resumes from `output_dir`'s checkpoints."""
    from rlhf import models
    from rlhf.reward import outputs as reward_outputs
    config.validate()  # settings and the required inputs
    storage.expand(config.prompt_dataset)  # StorageError naming the path when nothing matches
    reward_dir = reward_outputs.local_copy(config.reward_model)
    info = reward_outputs.read_info(reward_dir)
    base_ref = config.large_model_reference or info["base_model"]
    use_chat_template = config.use_chat_template
    if use_chat_template is None and "use_chat_template" in info:
        use_chat_template = bool(info["use_chat_template"])  # encode prompts as the reward model saw them

    rank, world, device = distributed.init(config.device)
    torch.manual_seed(config.seed)  # same LoRA initialisation on every rank
    tokenizer = models.load_tokenizer(base_ref, padding_side="left")
    prompts = load_prompts(config.prompt_dataset, tokenizer, config.prompt_sequence_length,
                           config.instruction or info.get("instruction") or None, use_chat_template)
    dtype = models.parse_dtype(config.dtype) or models.default_dtype(device)
    from rlhf import memory_plan  # refuse a model that cannot fit before loading it (CUDA only)
    plan = memory_plan.check_device("ppo", base_ref, memory_plan.Workload.from_configs(ppo=config), device, world,
                                    can_shard=True)
    if plan and "gradient_accumulation_steps" in plan.settings:  # smaller micro-batches, the same update
        config = dataclasses.replace(config, gradient_accumulation_steps=plan.settings["gradient_accumulation_steps"])
    causal_lm = models.load_causal_lm(base_ref, dtype=dtype, device=device)
    model = SharedBaseModel(causal_lm, config.lora_rank, config.lora_alpha, config.lora_dropout,
                            config.target_modules, config.value_model)
    reward_fn = build_reward(reward_dir, info, model, base_ref, models.resolve_model(base_ref), tokenizer,
                             prompts.messages, device=device, dtype=dtype, positive_label=config.positive_label)
    # After the reward adapter is attached: it is frozen, so it is sharded with the base.
    sharded = (config.shard_base or bool(plan and plan.strategy == "sharded")) and model.shard_base(device)
    if sharded:
        log.info("frozen base sharded over %d processes (FSDP2); the policy adapter and value head whole on each",
                 world)
    trainable, total = parameter_count(model)
    log.info("policy %s on %s (%s): %.1fM parameters, %.2fM trainable; %d prompts; %d steps × %d episodes; "
             "world size %d (%d episodes per process)", base_ref, device, str(dtype).removeprefix("torch."),
             total / 1e6, trainable / 1e6, len(prompts.ids), config.reinforcement_learning_train_steps,
             config.batch_size, world, config.batch_size // world)

    run = RunDir(config.output_dir, prefix="rlhf-ppo-")  # staged locally when on gs://
    layout = OutputLayout(run.local, checkpoints=run.checkpoints_dir)
    trainer = PPOTrainer(config, model, tokenizer, prompts.ids, reward_fn, layout, prompts.texts, rank, world)
    trainer.resume()  # every rank reads the same checkpoint; the trainer seeds each rank's sampling per step
    start = time.perf_counter()
    summary = trainer.train()
    summary["time/total_s"] = time.perf_counter() - start
    distributed.barrier()
    if rank == 0:
        with run.publish(SUMMARY_FILE, {**summary, "base_model": base_ref, "steps": trainer.step}):
            whole = unsharded_copy(config, model, base_ref, dtype) if sharded else model
            save_policy_adapter(whole, layout.adapter_dir, config, base_ref, tokenizer)
            if config.save_merged_model:
                save_merged_model(whole, layout.merged_dir, tokenizer)
        log.info("policy adapter written to %s", storage.join(config.output_dir, "policy_adapter"))
    distributed.shutdown()
    return summary


def unsharded_copy(config: PPOConfig, model: SharedBaseModel, base_ref: str, dtype) -> SharedBaseModel:
    """A whole copy of a sharded policy on CPU, for writing the adapter and the merged model as an
    unsharded run does: the base loaded again (it is frozen: what training saw) and the trained
    parameters, whole on every process, copied in. No collective: rank 0 calls it alone."""
    from rlhf import models
    copy = SharedBaseModel(models.load_causal_lm(base_ref, dtype=dtype, device=torch.device("cpu")),
                           config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules,
                           config.value_model)
    copy.load_trainable_state_dict(model.trainable_state_dict())
    return copy
