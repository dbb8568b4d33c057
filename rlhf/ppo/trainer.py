"""The PPO loop (Ziegler et al. 2019; Ouyang et al. 2022; "N implementation details", Huang et al. 2022).

Each step:
1. **rollout**: sample `batch_size` prompts, generate with the KV cache (`rollout.generate`);
   then the **old policy**: the sampled tokens' log-probs, entropies and values from one forward
   pass in training precision, without dropout (`old_policy`), so the first minibatch's ratio is 1
   and the KL compares like with like (the cached decoding loop differs by up to 3e-3 in bf16);
2. **reference**: log-probs of the same tokens with every adapter disabled (skipped when
   `kl_coeff` is 0: no KL term, no pass);
3. **scoring**: the reward model at each response's last token, normalized with its saved statistics;
   responses without EOS lose `missing_eos_penalty`;
4. **advantages**: per-token reward −β·KL plus the score on the last token, optional reward
   whitening, GAE(γ, λ), advantage whitening;
5. **update**: `ppo_epochs` passes over shuffled minibatches: clipped policy loss + c1·clipped value
   loss + c2·entropy loss (LoRA dropout active in these passes only), gradient clipping, AdamW;
6. **control**: the adaptive KL controller moves β; metrics (namespaced) to logs, TensorBoard and
   metrics.jsonl with the time split; a checkpoint and sample generations every `checkpoint_every`.

Checkpoints, resume (refused when settings outside `PPOConfig.RESUME_MAY_CHANGE` differ) and the
non-finite guard are `rlhf.rundir.CheckpointDir`'s: a non-finite score, loss or gradient stops the
run before anything of that step is saved, with a message naming the value; the last good
checkpoint stays and the outputs are not written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable, Optional, Sequence

import torch

from rlhf import storage
from rlhf.checkpoint import step_dir_name
from rlhf.errors import UserError
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.gae import gae
from rlhf.ppo.kl import kl_penalty, make_controller
from rlhf.ppo.losses import entropy_loss, policy_loss, value_loss
from rlhf.ppo.outputs import OutputLayout, write_samples
from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.prompts import PromptSampler, left_pad
from rlhf.ppo.rollout import Rollout, generate
from rlhf.ppo import distributed
from rlhf.ppo.distributed import masked_whiten  # over every process's tokens (the plain one alone)
from rlhf.ppo.whiten import masked_mean
from rlhf.rundir import CheckpointDir, NonFiniteError  # noqa: F401  (callers catch it from here too)
from rlhf.tracking import Tracker

log = logging.getLogger(__name__)

# A reward function maps a rollout to one score per row (already normalized).
RewardFn = Callable[[Rollout], torch.Tensor]

SHOWN = ["reward/mean", "policy/kl", "objective/kl_coeff", "loss/policy", "loss/value",
         "response/length", "perf/tokens_per_s", "time/generation_s", "time/scoring_s", "time/training_s"]

NON_FINITE_CAUSES = ("a learning rate too high (--reinforcement-learning-rate-multiplier), fp16 overflow "
                     "(use bf16 or fp32), or a reward model that returns NaN")


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class PPOTrainer:
    """Runs `config.reinforcement_learning_train_steps` PPO steps on `model`.

    `prompt_ids` are encoded prompts (`prompts.load_prompt_ids`); `reward_fn` scores rollouts
    (`rlhf.ppo.reward`); `layout` says where metrics, samples and checkpoints go.
    `rank`/`world_size` > 1: data parallel (`rlhf.ppo.distributed`: each rank samples
    `batch_size / world_size` episodes, DDP averages the gradients, statistics and metrics are
    reduced over the ranks, rank 0 writes).
    """

    def __init__(self, config: PPOConfig, model: SharedBaseModel, tokenizer, prompt_ids: Sequence[list[int]],
                 reward_fn: RewardFn, layout: OutputLayout, prompt_texts: Optional[Sequence[str]] = None,
                 rank: int = 0, world_size: int = 1):
        self.cfg = config.validate(inputs=False)  # prompts and reward come in memory
        self.model, self.tokenizer, self.reward_fn, self.layout = model, tokenizer, reward_fn, layout
        self.prompt_ids, self.prompt_texts = list(prompt_ids), prompt_texts
        self.rank, self.world_size = rank, world_size
        for name in ("batch_size", "mini_batch_size"):
            if getattr(config, name) % world_size:
                raise UserError(f"--{name.replace('_', '-')} {getattr(config, name)} does not split over "
                                f"{world_size} devices: give a multiple of {world_size}, or other --devices")
        # This process's share of the step's episodes and of each minibatch.
        self.local_batch, self.local_mini = config.batch_size // world_size, config.mini_batch_size // world_size
        if self.local_mini % config.gradient_accumulation_steps:
            raise UserError(f"--gradient-accumulation-steps {config.gradient_accumulation_steps} must divide "
                            f"each device's share of the minibatch ({self.local_mini} episodes on each of "
                            f"{world_size} devices)")
        self.device = model.device
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        if self.eos_id is None:
            raise UserError("the tokenizer has no EOS token: responses could never end")
        self.optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate,
                                           eps=1e-5, weight_decay=0.0)  # eps as lm-human-preferences
        self.kl_ctl = make_controller(config.kl_coeff, config.adaptive_kl, config.kl_target, config.kl_horizon)
        self.sampler = PromptSampler(len(self.prompt_ids), self.local_batch, config.seed, rank, world_size)
        # The update's pass; with several processes, DDP averages the trainable parameters' gradients
        # (with the base sharded, `reduce_gradients` does after each minibatch).
        self.passes = distributed.wrap(model, distributed.update_pass)
        self.is_main = rank == 0
        self.tracker = Tracker(total_steps=config.reinforcement_learning_train_steps,
                               tensorboard_dir=layout.tensorboard_dir if self.is_main else None,
                               jsonl_path=layout.metrics_path if self.is_main else None,
                               log_every=config.log_every, show=SHOWN, item_name="episodes")
        self.timer = _Timer(self.device)
        self.checkpoints = CheckpointDir(layout.checkpoints_dir, config)
        self.step = 0

    @property
    def last_checkpoint(self) -> Optional[str]:
        return self.checkpoints.last

    # -- resume ---------------------------------------------------------------------------------

    def resume(self) -> int:
        """Restore the newest checkpoint under the output directory, if any; returns its step."""
        ckpt = self.checkpoints.resume(load_trainable=self.model.load_trainable_state_dict,
                                       optimizer=self.optimizer, tracker=self.tracker)
        if ckpt is None:
            return 0
        self.kl_ctl.load_state_dict(ckpt.state["kl_controller"])
        self.sampler.load_state_dict(ckpt.state["sampler"])
        self.step = ckpt.step
        return ckpt.step

    def save_checkpoint(self) -> None:
        if not self.is_main:  # rank 0 writes; the others name its checkpoint in their messages
            self.checkpoints.last = storage.join(self.checkpoints.root, step_dir_name(self.step))
            return
        self.checkpoints.save(self.step, trainable=self.model.trainable_state_dict(), optimizer=self.optimizer,
                              tracker=self.tracker, state={"kl_controller": self.kl_ctl.state_dict(),
                                                           "sampler": self.sampler.state_dict()})

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        total = self.cfg.reinforcement_learning_train_steps
        every = self.cfg.checkpoint_every
        try:
            while self.step < total:
                if self.world_size > 1:
                    distributed.seed_step(self.cfg.seed, self.step)
                metrics = self.ppo_step()
                self.step += 1
                self.tracker.log(self.step, metrics, items=self.cfg.batch_size)
                if self.step == total or (every and self.step % every == 0):
                    self.write_samples()
                    self.save_checkpoint()
        finally:
            self.tracker.close()
        return self.tracker.summary()

    def _encode_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad([self.prompt_ids[i] for i in indices], self.pad_id, self.device)

    def rollout(self, indices: Sequence[int]) -> Rollout:
        ids, mask = self._encode_batch(indices)
        r = generate(self.model, ids, mask, self.cfg.target_sequence_length, self.eos_id, self.pad_id,
                     self.cfg.temperature, self.cfg.top_k, self.cfg.top_p)
        r.prompt_index = list(indices)
        return r

    @torch.no_grad()
    def old_policy(self, r: Rollout) -> None:
        """Replace the rollout's log-probs, entropies and values with those of one forward pass of the
        policy as the update computes them (training precision, no KV cache), dropout off."""
        model, mask = self.model, r.response_mask
        logprobs, entropy, values = model.response_pass(r.input_ids, r.attention_mask, r.prompt_width,
                                                        self.cfg.temperature, with_entropy=True)
        if model.value_model == "adapter":
            values = model.value_pass(r.input_ids, r.attention_mask, r.prompt_width)
        r.logprobs, r.entropy, r.values = logprobs * mask, entropy * mask, values * mask

    def _check(self, name: str, value: torch.Tensor) -> None:
        self.checkpoints.check_finite(name, value, self.step + 1, NON_FINITE_CAUSES)

    def score(self, rollout: Rollout) -> torch.Tensor:
        scores = self.reward_fn(rollout).to(self.device, torch.float32)
        self._check("reward", scores)
        if self.cfg.missing_eos_penalty:
            scores = scores - self.cfg.missing_eos_penalty * (~rollout.ended).to(scores.dtype)
        return scores

    def ppo_step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        t0, cpu0 = self.timer.now(), time.process_time()
        r = self.rollout(self.sampler.next_batch())
        t_gen = self.timer.now()
        mask = r.response_mask
        self.old_policy(r)
        t_old = self.timer.now()
        use_kl = self.kl_ctl.value > 0 or cfg.adaptive_kl
        ref_logprobs = (model.reference_logprobs(r.input_ids, r.attention_mask, r.prompt_width, cfg.temperature)
                        if use_kl else None)
        t_ref = self.timer.now()
        scores = self.score(r)
        t_score = self.timer.now()

        with torch.no_grad():
            kl = kl_penalty(r.logprobs, ref_logprobs, cfg.kl_estimator) * mask if use_kl else torch.zeros_like(mask)
            non_score = -self.kl_ctl.value * kl
            rewards = non_score.clone()
            rows = torch.arange(mask.shape[0], device=mask.device)
            rewards[rows, (r.lengths - 1).clamp(min=0)] += scores
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, r.values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask)
            self._check("advantages", advantages)
        stats = self.update(r, advantages, returns)
        t_train = self.timer.now()

        rows_here, tokens = mask.shape[0], float(mask.sum())
        seq_kl = distributed.global_mean(kl.sum(1).sum().item(), rows_here)  # every rank's episodes
        self.kl_ctl.update(seq_kl, cfg.batch_size)
        score_sum, score_squares, n = distributed.all_sum(
            [scores.sum().item(), scores.double().pow(2).sum().item(), rows_here])
        step_s = t_train - t0
        metrics = {
            "reward/mean": scores.mean().item(),
            "reward/std": math.sqrt(max(score_squares - score_sum ** 2 / n, 0.0) / (n - 1)) if n > 1 else 0.0,
            "reward/total": (scores + non_score.sum(1)).mean().item(),
            "objective/kl_coeff": self.kl_ctl.value,
            "policy/entropy": masked_mean(r.entropy, mask).item(),
            "response/length": r.lengths.float().mean().item(),
            "response/eos_fraction": r.ended.float().mean().item(),
            "value/mean": masked_mean(r.values, mask).item(),
            **stats,
            "perf/tokens_per_s": tokens / step_s,
            "perf/episodes_per_s": mask.shape[0] / step_s,
            "perf/generation_tokens_per_s": tokens / max(t_gen - t0, 1e-9),
            "time/generation_s": t_gen - t0,
            "time/old_policy_s": t_old - t_gen,
            "time/reference_s": t_ref - t_old,
            "time/scoring_s": t_score - t_ref,
            "time/training_s": t_train - t_score,
            "time/step_s": step_s,
            # CPU seconds of this process (all threads): on a shared machine, a steadier cost than wall time
            "time/process_cpu_s": time.process_time() - cpu0,
        }
        if use_kl:
            metrics["policy/kl"] = seq_kl
        # Over every rank: means weighted by episodes (tokens for per-token means), times the slowest
        # rank's, throughputs summed; reward/std, policy/kl and β are already global.
        return distributed.reduce_metrics(metrics, weight=rows_here,
                                          weights={"policy/entropy": tokens, "value/mean": tokens})

    def update(self, r: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        batch = r.response_ids.shape[0]
        micro = self.local_mini // cfg.gradient_accumulation_steps
        sums: dict[str, float] = {}
        count, norms = 0, []
        params = model.trainable_parameters()
        input_ids, attention_mask = r.input_ids, r.attention_mask
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(batch).to(self.device)
            for start in range(0, batch, self.local_mini):
                mb = order[start:start + self.local_mini]
                for m0 in range(0, len(mb), micro):
                    idx = mb[m0:m0 + micro]
                    last = m0 + micro >= len(mb)  # DDP averages the gradients in this backward pass
                    with contextlib.nullcontext() if last else self.passes.no_sync():
                        loss, parts = self._loss(input_ids[idx], attention_mask[idx], r, idx, advantages[idx],
                                                 returns[idx], r.prompt_width)
                        self._check("loss/total", loss.detach())
                        (loss / cfg.gradient_accumulation_steps).backward()
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                if hasattr(self.passes, "reduce_gradients"):  # a sharded base: average them now, once
                    self.passes.reduce_gradients()
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                self._check("gradient norm", norm)
                norms.append(float(norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["optim/grad_norm"] = sum(norms) / max(len(norms), 1)
        out["optim/lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def _loss(self, input_ids, attention_mask, r: Rollout, idx, advantages, returns, prompt_width):
        cfg = self.cfg
        mask = r.response_mask[idx]
        logprobs, entropy, values = self.passes(input_ids, attention_mask, prompt_width, cfg.temperature,
                                                with_entropy=cfg.ent_coef > 0)  # distributed.update_pass
        pg_loss, pg = policy_loss(logprobs, r.logprobs[idx], advantages, mask, cfg.cliprange)
        vf_loss, vf = value_loss(values, r.values[idx], returns, mask, cfg.cliprange_value)
        loss = pg_loss + cfg.vf_coef * vf_loss
        parts = {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                 "policy/clipfrac": pg["clipfrac"].item(), "policy/approx_kl": pg["approx_kl"].item(),
                 "value/clipfrac": vf["clipfrac"].item()}
        if cfg.ent_coef > 0:
            ent_loss = entropy_loss(entropy, mask)
            loss = loss + cfg.ent_coef * ent_loss
            parts["loss/entropy"] = ent_loss.item()
        parts["loss/total"] = loss.item()
        return loss, parts

    # -- samples --------------------------------------------------------------------------------

    def write_samples(self) -> None:
        """Generations for the first `sample_count` prompts, seeded by the step so they never
        disturb the training random stream."""
        n = min(self.cfg.sample_count, len(self.prompt_ids))
        # A sharded base: every process runs the passes (FSDP gathers each layer from all), rank 0 writes.
        if n == 0 or not (self.is_main or getattr(self.model, "sharded", False)):
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed + self.step)
            r = self.rollout(list(range(n)))
            scores = self.reward_fn(r).float().cpu()
        if not self.is_main:
            return
        rows = []
        for i in range(n):
            length = int(r.lengths[i])
            ids = r.response_ids[i, :length].tolist()
            rows.append({"step": self.step,
                         "prompt": self.prompt_texts[i] if self.prompt_texts else None,
                         "response": self.tokenizer.decode(ids, skip_special_tokens=True),
                         "response_tokens": length, "ended_with_eos": bool(r.ended[i]),
                         "score": float(scores[i])})
        write_samples(self.layout.samples_path(self.step), rows)
