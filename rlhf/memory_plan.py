"""A memory plan before anything is loaded: each step's peak memory per device, from the model's
`config.json` alone, and whether it fits the GPUs asked for.

Without it a model that does not fit fails with out-of-memory after its weights were downloaded
and loaded. The plan is arithmetic on the architecture (no torch, no download):

    peak = weights + adapters and their optimizer + max(phase working sets) + runtime overhead

each term below says what it holds. Activation sizes are per token per decoder layer, counted once
with `torch.autograd.graph.saved_tensors_hooks` on a LoRA llama layer (what autograd keeps for the
backward pass), and checked against measured peak memory on CPU by `benchmarks/memory_plan_check.py`
(README, "Memory plan").

Strategies: **replicated** (every device holds the whole model: data parallel) or **sharded** (the
frozen base split over the devices, FSDP2; the plan says when it is needed; the reward, PPO and
evaluation steps shard it then, or with `--shard-base`). The plan also turns on the memory settings a
step may change without changing its result: gradient checkpointing for the reward model, smaller
PPO micro-batches (more gradient accumulation, the same update). When nothing fits, the message names
the knobs and what would fit.

Entry points: `plan_steps` (the CLI `rlhf plan`), `pipeline_problems` (`rlhf submit`, before sending)
and `check_device` (the trainers, on CUDA, before loading weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from rlhf.errors import UserError

log = logging.getLogger(__name__)

GB = 1e9

# GPU memory by Vertex AI accelerator type (`google.cloud.aiplatform_v1.types.AcceleratorType`), in
# GB as the products are sold (decimal): a little under what the devices report, never over.
ACCELERATOR_GB: dict[str, float] = {
    "NVIDIA_TESLA_T4": 16, "NVIDIA_TESLA_P100": 16, "NVIDIA_TESLA_V100": 16, "NVIDIA_L4": 24,
    "NVIDIA_TESLA_A100": 40, "NVIDIA_A100_80GB": 80, "NVIDIA_H100_80GB": 80, "NVIDIA_H100_MEGA_80GB": 80,
    "NVIDIA_H200_141GB": 141, "NVIDIA_B200": 180,
}
# Device counts a Vertex AI machine offers (tried when suggesting what would fit).
COUNTS = (1, 2, 4, 8)

RUNTIME_OVERHEAD = 1.5 * GB   # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers: held before any tensor
USABLE_FRACTION = 0.9         # the caching allocator's fragmentation: plan to fill at most 90%
LOGITS_CHUNK = 4 * (1 << 24)  # rlhf.ppo.logprobs.CHUNK_ELEMENTS float32 logits per chunk
ADAM_BYTES = 4 + 4 + 8        # per trainable parameter: fp32 value, fp32 gradient, AdamW's two moments
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")  # peft's default for llama, gemma and qwen2

STEPS = ("reward", "ppo", "evaluation")
STEP_NAMES = {"reward": "reward model", "ppo": "reinforcement learning", "evaluation": "evaluation"}
# The pipeline parameters that size each step's machine (rlhf.pipeline_settings.HARDWARE_STAGES).
HARDWARE_PREFIX = {"reward": "reward_model", "ppo": "reinforcement_learning", "evaluation": "evaluation"}


# -- the architecture, from config.json ------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer's `config.json` that size its memory."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool        # lm_head shares the embedding matrix
    gated: bool       # gate_proj/up_proj/down_proj (SwiGLU, GeGLU) rather than fc1/fc2
    qkv_bias: bool    # bias on q/k/v (qwen2)
    o_bias: bool      # bias on o_proj (llama's attention_bias covers all four)
    mlp_bias: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Architecture":
        config = dict(config.get("text_config") or config)  # a multimodal wrapper keeps its decoder here
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            kind = config.get("model_type", "")
            attention_bias = bool(config.get("attention_bias", False))
            return cls(vocab=int(config["vocab_size"]), hidden=hidden,
                       intermediate=int(config["intermediate_size"]), layers=int(config["num_hidden_layers"]),
                       heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads),
                       tied=bool(config.get("tie_word_embeddings", True)),
                       gated=kind not in ("gpt2", "gpt_neox", "opt", "phi"),
                       qkv_bias=attention_bias or kind == "qwen2", o_bias=attention_bias,
                       mlp_bias=bool(config.get("mlp_bias", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"config.json lacks what the memory plan needs ({e}): hidden_size, "
                            f"intermediate_size, num_hidden_layers, num_attention_heads, vocab_size") from None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a decoder layer, by the name LoRA targets."""
        h, i = self.hidden, self.intermediate
        shapes = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                  "o_proj": (self.q_dim, h)}
        mlp = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)} if self.gated else {
            "fc1": (h, i), "fc2": (i, h)}
        return {**shapes, **mlp}

    def layer_params(self) -> int:
        linear = sum(a * b for a, b in self.linear_shapes().values())
        bias = (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + self.hidden * self.o_bias
        if self.mlp_bias:
            bias += sum(out for name, (_, out) in self.linear_shapes().items() if not name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")))
        return linear + bias + 2 * self.hidden  # + the two RMSNorm weights

    def parameters(self, head: str = "lm") -> int:
        """Parameters of the causal LM (`head="lm"`) or of the one-label sequence classifier the reward
        model is (`head="score"`: no lm_head, a hidden_size score row)."""
        body = self.vocab * self.hidden + self.layers * self.layer_params() + self.hidden  # embeddings, layers, final norm
        if head == "score":
            return body + self.hidden
        return body + (0 if self.tied else self.vocab * self.hidden)

    def lora_parameters(self, rank: int, targets: Sequence[str]) -> int:
        shapes = self.linear_shapes()
        names = list(shapes) if list(targets) == ["all-linear"] else [t for t in (targets or DEFAULT_LORA_TARGETS)
                                                                       if t in shapes]
        return self.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)

    def lora_inputs(self, targets: Sequence[str]) -> int:
        """Input features summed over the LoRA-adapted linears of one layer (their saved inputs)."""
        shapes = self.linear_shapes()
        names = list(shapes) if list(targets) == ["all-linear"] else [t for t in (targets or DEFAULT_LORA_TARGETS)
                                                                       if t in shapes]
        return sum(shapes[n][0] for n in names)

    def activation_bytes(self, dtype_bytes: int, targets: Sequence[str], dropout: float) -> float:
        """Bytes autograd keeps per token per decoder layer for the backward pass of a LoRA model with
        a frozen base (frozen linears keep no input). Measured with saved_tensors_hooks, see module doc."""
        h, b = self.hidden, dtype_bytes
        lora_in = self.lora_inputs(targets)
        kept = (5 * h + 2 * self.kv_dim + 3 * self.intermediate) * b  # norm inputs, q/out of attention + k/v, MLP gate/up/product
        if b < 4:
            kept += 2 * h + 4 * lora_in  # RMSNorm's fp32 statistics; each adapted input cast to the fp32 adapter
        if dropout > 0:
            kept += lora_in * (b + 1)    # LoRA dropout: a dropped copy of each adapted input and its mask
        return kept


# -- where configs come from -------------------------------------------------------------------------

def shipped_configs() -> dict[str, dict]:
    """The aliases' config.json essentials shipped with the package (rlhf/model_configs.json)."""
    text = resources.files("rlhf").joinpath("model_configs.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def model_config(ref: str, resolve: bool = False) -> Optional[dict]:
    """The config.json (a dict) of a model reference: shipped for an alias, read from a local
    directory; None otherwise (gs:// or a hub id: no network at plan time). With `resolve`, a
    reference that `rlhf.models.resolve_model` already fetched (the trainers) is read from its copy."""
    from rlhf import models
    alias = models.normalize_alias(ref or models.DEFAULT_MODEL)
    shipped = shipped_configs()
    if alias in shipped:
        return shipped[alias]
    if alias in models.ALIASES:
        return None  # an encoder-decoder alias: refused elsewhere
    path = Path(ref).expanduser() / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    if resolve:
        path = Path(models.resolve_model(ref)) / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return None


# -- the settings a plan reads --------------------------------------------------------------------

def dtype_bytes(dtype: str) -> int:
    """Bytes per base weight: auto is bf16 on a GPU (what the plan is for), fp32 4."""
    return 4 if dtype == "fp32" else 2


@dataclass
class Workload:
    """What each step runs: the configs' settings that size memory (defaults from the configs)."""

    dtype: str = "auto"
    prompt: int = 0
    target: int = 0
    reward: Any = None        # RewardConfig
    ppo: Any = None           # PPOConfig
    evaluation: Any = None    # EvalConfig

    @classmethod
    def from_configs(cls, reward=None, ppo=None, evaluation=None, dtype: Optional[str] = None,
                     **shared: int) -> "Workload":
        from rlhf.evaluate.config import EvalConfig
        from rlhf.ppo.config import PPOConfig
        from rlhf.reward.config import RewardConfig
        given = next((c for c in (reward, ppo, evaluation) if c is not None), None) or RewardConfig()
        reward, ppo, evaluation = reward or RewardConfig(), ppo or PPOConfig(), evaluation or EvalConfig()
        return cls(dtype=dtype or getattr(given, "dtype", "auto"),
                   prompt=shared.get("prompt") or given.prompt_sequence_length,
                   target=shared.get("target") or given.target_sequence_length,
                   reward=reward, ppo=ppo, evaluation=evaluation)


# -- terms and plans --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    name: str
    bytes: float


@dataclass
class StepPlan:
    step: str
    strategy: str                       # replicated or sharded
    devices: int
    device_bytes: float
    terms: list[Term]
    settings: dict = field(default_factory=dict)  # memory settings the plan turned on
    note: str = ""

    @property
    def peak(self) -> float:
        return sum(t.bytes for t in self.terms)

    @property
    def fits(self) -> bool:
        return self.peak <= USABLE_FRACTION * self.device_bytes

    def line(self) -> str:
        parts = ", ".join(f"{t.name} {t.bytes / GB:.1f}" for t in self.terms if t.bytes >= 0.05 * GB)
        extra = "".join(f", {k}={v}" for k, v in self.settings.items())
        return (f"{STEP_NAMES[self.step]}: {self.peak / GB:.1f} GB of {self.device_bytes / GB:.0f} GB per device, "
                f"{self.strategy} over {self.devices}{extra} ({parts})")


def _weights(arch: Architecture, b: int, head: str, strategy: str, devices: int) -> list[Term]:
    full = arch.parameters(head) * b
    if strategy == "replicated":
        return [Term("weights", full)]  # every device holds the whole frozen base
    layer = arch.layer_params() * b
    return [Term("weights (shard)", full / devices),    # FSDP keeps 1/N of every parameter
            Term("gathered layers", 2 * layer)]          # one layer all-gathered, the next prefetched


def _training_activations(arch, tokens, b, targets, dropout, checkpointing) -> list[Term]:
    per_layer = arch.activation_bytes(b, targets, dropout)
    if checkpointing:  # each layer keeps only its input; one layer's activations are recomputed at a time
        return [Term("checkpoints", arch.layers * tokens * arch.hidden * b), Term("activations", tokens * per_layer)]
    return [Term("activations", arch.layers * tokens * per_layer),
            Term("backward working set", tokens * per_layer)]  # gradients of one layer's activations in flight


def _kv_cache(arch: Architecture, rows: int, length: int, b: int) -> float:
    return rows * arch.layers * 2 * arch.kv_dim * length * b  # keys and values of every layer and position


def reward_terms(arch, work: Workload, strategy: str, devices: int, checkpointing: bool) -> list[Term]:
    cfg, b = work.reward, dtype_bytes(work.dtype)
    if cfg.share_prompt:  # one row per pair: prompt, chosen, rejected
        rows, length = cfg.batch_size, work.prompt + 2 * work.target
    else:                 # two padded rows per pair
        rows, length = 2 * cfg.batch_size, work.prompt + work.target
    tokens = rows * length
    trainable = arch.lora_parameters(cfg.reward_lora_dim, cfg.lora_target_modules) + arch.hidden
    return [*_weights(arch, b, "score", strategy, devices),
            Term("adapters+AdamW", trainable * ADAM_BYTES),  # LoRA + score head, fp32 with grads and moments
            *_training_activations(arch, tokens, b, cfg.lora_target_modules, cfg.lora_dropout, checkpointing),
            Term("block mask", rows * length * length if cfg.share_prompt else 0),  # the 4D bool mask
            Term("runtime", RUNTIME_OVERHEAD)]


def ppo_terms(arch, work: Workload, strategy: str, devices: int, accumulation: int) -> list[Term]:
    cfg, b = work.ppo, dtype_bytes(work.dtype)
    length = work.prompt + work.target
    policy = arch.lora_parameters(cfg.lora_rank, cfg.lora_target_modules)
    adapters = (2 if cfg.value_model == "adapter" else 1) * policy + arch.hidden + 1
    reward_adapter = arch.lora_parameters(work.reward.reward_lora_dim, work.reward.lora_target_modules) * 4
    # rollout: the KV cache of the whole batch, and one step's float32 logits, log-softmax and probabilities
    rollout = _kv_cache(arch, cfg.batch_size, length, b) + 3 * cfg.batch_size * arch.vocab * 4
    micro = cfg.mini_batch_size // accumulation
    tokens = micro * length
    graphs = 2 if cfg.value_model == "adapter" else 1  # the value adapter's pass is alive with the policy's
    update = sum(t.bytes for t in _training_activations(arch, tokens, b, cfg.lora_target_modules,
                                                        cfg.lora_dropout, False)) * graphs
    if strategy == "sharded":  # the output layer is in the FSDP root: log-probs from the model's own logits
        update += 3 * micro * (work.target + 1) * arch.vocab * 4  # float32 logits, log-softmax, gradient
        rows = cfg.batch_size // devices  # old-policy and reference passes over the whole share, no grad
        rollout = max(rollout, 2 * rows * (work.target + 1) * arch.vocab * 4)
    else:
        update += 3 * LOGITS_CHUNK  # chunked log-probs: a chunk's logits, probabilities and their gradient
    return [*_weights(arch, b, "lm", strategy, devices),
            Term("adapters+AdamW", adapters * ADAM_BYTES),  # policy LoRA (+ value adapter) and value head
            Term("reward adapter", reward_adapter),         # the reward model as a second adapter, frozen fp32
            Term("rollout" if rollout >= update else "update", max(rollout, update)),  # the phases run one after the other
            Term("runtime", RUNTIME_OVERHEAD)]


def evaluation_terms(arch, work: Workload, strategy: str, devices: int) -> list[Term]:
    cfg, b = work.evaluation, dtype_bytes(work.dtype)
    rows, length, vocab = cfg.batch_size, work.prompt + work.target, arch.vocab
    generation = _kv_cache(arch, rows, length, b) + 2 * rows * vocab * 4  # cache, one step's fp32 logits
    if cfg.measure_kl:  # the tuned logits kept (list + stacked copy, fp32), the base's over the response
        generation += 2 * rows * work.target * vocab * 4 + rows * (work.target + 1) * vocab * b
    return [*_weights(arch, b, "lm", strategy, devices),  # the tuned adapter shares the base
            Term("generation", generation), Term("runtime", RUNTIME_OVERHEAD)]


def _candidates(step: str, work: Workload, devices: int):
    """(strategy, memory settings) in order of preference: replicated first (nothing sharded yet), the
    configured settings before the ones the plan may turn on."""
    if step == "reward":
        knobs = [{"gradient_checkpointing": work.reward.gradient_checkpointing}]
        if not work.reward.gradient_checkpointing:
            knobs.append({"gradient_checkpointing": True})
    elif step == "ppo":
        mini, start = work.ppo.mini_batch_size, work.ppo.gradient_accumulation_steps
        knobs = [{"gradient_accumulation_steps": g} for g in range(start, mini + 1) if mini % g == 0]
    else:
        knobs = [{}]
    strategies = ["replicated", "sharded"] if devices > 1 else ["replicated"]
    return [(s, k) for s in strategies for k in knobs]


def plan_step(step: str, arch: Architecture, work: Workload, devices: int, device_bytes: float) -> StepPlan:
    """The first candidate that fits, else the last one tried (the leanest), which does not fit."""
    chosen = None
    for strategy, knobs in _candidates(step, work, devices):
        if step == "reward":
            terms = reward_terms(arch, work, strategy, devices, knobs["gradient_checkpointing"])
        elif step == "ppo":
            terms = ppo_terms(arch, work, strategy, devices, knobs["gradient_accumulation_steps"])
        else:
            terms = evaluation_terms(arch, work, strategy, devices)
        changed = {k: v for k, v in knobs.items() if v != _configured(step, work, k)}
        plan = StepPlan(step, strategy, devices, device_bytes, terms, changed)
        if chosen is None or plan.peak < chosen.peak:
            chosen = plan
        if plan.fits:
            return plan
    return chosen


def _configured(step: str, work: Workload, knob: str):
    return getattr(work.reward if step == "reward" else work.ppo, knob)


def what_would_fit(steps: Sequence[str], arch: Architecture, work: Workload, accelerator: str) -> str:
    """'1 x NVIDIA_A100_80GB or 2 x NVIDIA_L4 sharded': the smallest single GPU on which every step
    fits, and the fewest of the asked-for type (else the least memory of any type) that fit."""
    def fits(name: str, n: int) -> list[StepPlan]:
        plans = [plan_step(step, arch, work, n, ACCELERATOR_GB[name] * GB) for step in steps]
        return plans if all(p.fits for p in plans) else []

    by_size = sorted(ACCELERATOR_GB, key=ACCELERATOR_GB.get)
    options = [f"1 x {next(name for name in by_size if fits(name, 1))}"] if any(fits(n, 1) for n in by_size[-1:]) else []
    for names in ([accelerator] if accelerator in ACCELERATOR_GB else [], by_size):
        found = [(n * ACCELERATOR_GB[name], n, name, plans) for name in names for n in COUNTS[1:]
                 if (plans := fits(name, n))]
        if found:
            _, n, name, plans = min(found, key=lambda x: x[:2])
            sharded = " sharded" if any(p.strategy == "sharded" for p in plans) else ""
            options.append(f"{n} x {name}{sharded}")
            break
    return " or ".join(options) if options else "nothing up to 8 x the largest GPU"


def refusal(plans: Sequence[StepPlan], arch: Architecture, work: Workload, ref: str, accelerator: str,
            count_knob: str = "--accelerator-count", type_knob: str = "--accelerator-type") -> str:
    """One message for the steps that do not fit: what, by how much, the knobs and what would fit."""
    first = plans[0]
    needs = "; ".join(f"{STEP_NAMES[p.step]} {p.peak / GB:.1f} GB ("
                      + ", ".join(f"{t.name} {t.bytes / GB:.1f}" for t in p.terms if t.bytes >= 0.05 * GB) + ")"
                      for p in plans)
    batches = {"reward": "reward_model_batch_size", "ppo": "reinforcement_learning_batch_size",
               "evaluation": "evaluation_batch_size"}
    return (f"{ref} does not fit {first.devices} x {accelerator} ({first.device_bytes / GB:.0f} GB each, "
            f"{USABLE_FRACTION:.0%} usable): per device it needs {needs}. Lower "
            f"{', '.join(batches[p.step] for p in plans)}, prompt_sequence_length or target_sequence_length, "
            f"or use more GPUs ({count_knob}) or a larger GPU type ({type_knob}): fits on "
            f"{what_would_fit([p.step for p in plans], arch, work, accelerator)}")


@dataclass
class Hardware:
    accelerator: str    # a Vertex accelerator name, or a description ("cuda:0")
    count: int
    device_bytes: float

    @classmethod
    def vertex(cls, accelerator: str, count: int) -> "Hardware":
        if accelerator not in ACCELERATOR_GB:
            raise UserError(f"no memory size known for accelerator {accelerator!r}: use one of "
                            f"{', '.join(sorted(ACCELERATOR_GB, key=ACCELERATOR_GB.get))}")
        return cls(accelerator, count, ACCELERATOR_GB[accelerator] * GB)


def plan_steps(ref: str, config: Mapping, work: Workload, hardware: Mapping[str, Hardware],
               steps: Iterable[str] = STEPS, pipeline: bool = False) -> tuple[list[StepPlan], list[tuple[str, str]]]:
    """Each step's plan on its hardware, and the refusals: (step, message) per step that does not fit."""
    arch, steps = Architecture.from_config(config), list(steps)
    plans = [plan_step(step, arch, work, hardware[step].count, hardware[step].device_bytes) for step in steps]
    problems = []
    for step, plan in zip(steps, plans):
        hw = hardware[step]
        together = [p for p in plans if not p.fits and hardware[p.step] == hw]
        if not plan.fits and plan is together[0]:  # steps on the same hardware share one message
            prefix = HARDWARE_PREFIX[step]
            knobs = ((f"{prefix}_accelerator_count", f"{prefix}_accelerator_type") if pipeline
                     else ("--accelerator-count", "--accelerator-type"))
            problems.append((step, refusal(together, arch, work, ref, hw.accelerator, *knobs)))
    return plans, problems


# -- rlhf submit: the pipeline's parameters --------------------------------------------------------

def pipeline_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(parameter, message) for each GPU stage whose model does not fit its Vertex accelerators.
    Only for a model whose config is shipped (an alias) or a local directory; others are skipped
    with a log line (no network at submit time). TPU training stages are not planned."""
    from rlhf.pipeline_settings import EVALUATION, REINFORCEMENT_LEARNING, REWARD_MODEL
    ref = values.get("large_model_reference") or ""
    config = model_config(ref) if ref else None
    if config is None:
        if ref:
            log.info("memory plan skipped: no config.json for %s here (only aliases and local directories "
                     "are planned before submitting)", ref)
        return []
    configs = {}
    for key, stage in (("reward", REWARD_MODEL), ("ppo", REINFORCEMENT_LEARNING), ("evaluation", EVALUATION)):
        configs[key] = stage.build(stage.fields_from(values), values.get(stage.options) if stage.options else None)
    work = Workload.from_configs(configs["reward"], configs["ppo"], configs["evaluation"])
    steps = [s for s in STEPS if s == "evaluation" or values.get("accelerator_type", "GPU") != "TPU"]
    hardware = {}
    for step in list(steps):
        prefix = HARDWARE_PREFIX[step]
        accelerator, count = values.get(f"{prefix}_accelerator_type"), values.get(f"{prefix}_accelerator_count") or 1
        if accelerator not in ACCELERATOR_GB:
            steps.remove(step)  # a Kubeflow resource name or an unknown type: no size to plan against
            continue
        hardware[step] = Hardware.vertex(accelerator, int(count))
    _, problems = plan_steps(ref, config, work, hardware, steps, pipeline=True)
    return [(f"{HARDWARE_PREFIX[step]}_accelerator_type", message) for step, message in problems]


# -- the trainers: on the device itself, before loading weights ----------------------------------------

def check_device(step: str, ref: str, work: Workload, device, world_size: int = 1,
                 can_shard: bool = False) -> Optional[StepPlan]:
    """Plan `step` on the CUDA devices at hand (their real memory) before weights load. Returns the
    plan (its `settings` are the memory settings to apply), None when not on CUDA or no config.json
    is at hand; raises UserError when it cannot fit (or needs sharding a trainer cannot do)."""
    if getattr(device, "type", str(device)) != "cuda":
        log.info("memory plan skipped on %s (only CUDA devices are planned)", device)
        return None
    import torch
    try:
        config = model_config(ref, resolve=True)
    except (UserError, OSError, ValueError) as e:
        log.info("memory plan skipped: no config.json for %s (%s)", ref, e)
        return None
    if config is None:
        log.info("memory plan skipped: no config.json for %s", ref)
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    arch = Architecture.from_config(config)
    plan = plan_step(step, arch, work, world_size, props.total_memory)
    name = f"{world_size} x {props.name}"
    if not plan.fits:
        raise UserError(refusal([plan], arch, work, ref, props.name, "more GPUs", "a larger GPU"))
    if plan.strategy == "sharded" and not can_shard:
        raise UserError(f"{ref}: the {STEP_NAMES[step]} step fits {name} only with the frozen base sharded "
                        f"over the devices (FSDP), which this trainer does not do yet: use a larger GPU "
                        f"type ({plan.peak / GB:.1f} GB per device when sharded)")
    log.info("memory plan: %s", plan.line())
    return plan
