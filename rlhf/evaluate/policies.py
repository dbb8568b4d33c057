"""Load the tuned policy and its base so that both share one copy of the base weights when they can.

A tuned *adapter* (a PEFT LoRA directory, what `rlhf tune` writes) is loaded as `PeftModel` on the
base; the base model's outputs then come from the same object with the adapter disabled
(`disable_adapter()`), as TRL computes reference log-probs. A tuned *full model* directory is loaded
beside a separate base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlhf import models, storage
from rlhf.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
PPO_ADAPTER_SUBDIR = "policy_adapter"  # where `rlhf tune` puts the adapter in its output directory


def find_adapter_dir(ref: str) -> Optional[str]:
    """The local directory of a PEFT adapter at `ref` (local path, /gcs/ path or gs:// URI; a PPO
    output directory stands for its `policy_adapter/`), or None when `ref` is not an adapter.
    A gs:// adapter is copied once into the model cache."""
    if storage.is_gcs(ref):
        if not storage.exists(storage.join(ref, ADAPTER_CONFIG)):
            inner = storage.join(ref, PPO_ADAPTER_SUBDIR)
            return find_adapter_dir(inner) if storage.exists(storage.join(inner, ADAPTER_CONFIG)) else None
        target = models.cache_dir() / "adapters" / hashlib.sha256(ref.rstrip("/").encode()).hexdigest()[:16]
        if not (target / ADAPTER_CONFIG).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=target.parent, prefix=".tmp-")
            try:
                storage.download_dir(ref, tmp)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)
    path = Path(ref).expanduser()
    for candidate in (path, path / PPO_ADAPTER_SUBDIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return str(candidate)
    return None


def adapter_base_reference(adapter_dir: str) -> Optional[str]:
    """The base model an adapter was trained on, as PEFT recorded it (may be a path on another machine)."""
    try:
        with open(Path(adapter_dir) / ADAPTER_CONFIG) as f:
            return json.load(f).get("base_model_name_or_path") or None
    except (OSError, ValueError) as e:
        raise UserError(f"{adapter_dir}/{ADAPTER_CONFIG} cannot be read as JSON: {e}") from None


def choose_base_reference(model_ref: str, base_ref: str, adapter_dir: Optional[str]) -> str:
    """The base to compare against: the one given, else the adapter's recorded base when it resolves
    here, else the embedded default."""
    if base_ref:
        return base_ref
    recorded = adapter_base_reference(adapter_dir) if adapter_dir else None
    if recorded:
        try:
            models.resolve_model(recorded)
            return recorded
        except UserError:
            log.warning("the adapter %s was trained on %s, which does not resolve here; comparing with "
                        "the default %s (pass the base model reference to choose another)",
                        model_ref, recorded, models.DEFAULT_MODEL)
    return models.DEFAULT_MODEL


@dataclass
class PolicyPair:
    """The tuned model and (unless it is `tuned` with its adapter disabled) a separate base model."""

    tuned: Any
    tokenizer: Any
    base_reference: str
    separate_base: Any = None
    sharded: bool = False  # the weights are sharded over the processes (`shard`)

    @property
    def shares_base(self) -> bool:
        return self.separate_base is None

    def shard(self, device) -> bool:
        """Shard every model of the pair over the processes (FSDP2, ``rlhf.distributed.shard_frozen``),
        each rooted at the causal LM whose ``forward`` generation calls (under a PeftModel, its base
        model). Nothing is trained here, so every weight is frozen and sharded, LoRA included. Every
        process must then run as many forward passes (``inference.generate``'s ``rounds``). False
        (nothing done) in a single process."""
        from rlhf import distributed
        if not distributed.active():
            return False
        for model in (self.tuned, self.separate_base):
            if model is not None:
                model.requires_grad_(False)
                root = model.get_base_model() if hasattr(model, "get_base_model") else model
                distributed.shard_frozen(model, device, root=root)
        self.sharded = True
        return True

    @contextlib.contextmanager
    def base(self):
        """The base model: the tuned PeftModel with its adapter disabled, or the separate one."""
        if self.separate_base is not None:
            yield self.separate_base
        else:
            with self.tuned.disable_adapter():
                yield self.tuned


def load_policy_pair(model_ref: str, base_ref: str = "", device=None, dtype=None) -> PolicyPair:
    """Load the tuned model (`model_ref`: an adapter or a full model) and its base (see module doc)."""
    if not model_ref:
        raise UserError("no model to evaluate: give the tuned adapter or model directory (--model)")
    device = models.pick_device(device) if device is None or isinstance(device, str) else device
    adapter_dir = find_adapter_dir(model_ref)
    if adapter_dir is None:
        models.resolve_model(model_ref)  # a wrong reference fails before the base is loaded
    base_ref = choose_base_reference(model_ref, base_ref, adapter_dir)
    tokenizer = models.load_tokenizer(base_ref, padding_side="left")
    base = models.load_causal_lm(base_ref, dtype=dtype, device=device)
    if adapter_dir:
        from peft import PeftModel
        try:
            tuned = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"the adapter {model_ref} does not fit the base model {base_ref}: "
                            f"{str(e).splitlines()[0]}. Pass the base it was trained on "
                            f"(--large-model-reference)") from None
        log.info("tuned = %s (LoRA adapter) on base %s; base outputs with the adapter disabled",
                 model_ref, base_ref)
        return PolicyPair(tuned=tuned.eval(), tokenizer=tokenizer, base_reference=base_ref)
    tuned = models.load_causal_lm(model_ref, dtype=dtype, device=device)
    tuned_vocab = tuned.get_input_embeddings().weight.shape[0]
    base_vocab = base.get_input_embeddings().weight.shape[0]
    if tuned_vocab != base_vocab:
        raise UserError(f"the model {model_ref} (vocabulary {tuned_vocab}) and the base {base_ref} "
                        f"(vocabulary {base_vocab}) do not share a tokenizer, so they cannot be "
                        f"compared token by token: pass the base this model was tuned from")
    log.info("tuned = %s (full model) against a separate base %s", model_ref, base_ref)
    return PolicyPair(tuned=tuned.eval(), tokenizer=tokenizer, base_reference=base_ref,
                      separate_base=base.eval())


def load_original_base(ref: str, sft_model: str, vocab_size: int, device=None, dtype=None):
    """The model an SFT base was fine-tuned from (``rlhf.evaluate.lineage``), checked to share the
    SFT model's vocabulary (``vocab_size``): all three models decode the same prompt tokens."""
    device = models.pick_device(device) if device is None or isinstance(device, str) else device
    model = models.load_causal_lm(ref, dtype=dtype, device=device)
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab != vocab_size:
        raise UserError(f"the original base {ref} (vocabulary {vocab}) and the SFT model {sft_model} "
                        f"(vocabulary {vocab_size}) do not share a tokenizer: pass the model the SFT model "
                        f"was fine-tuned from (--sft-base-model), or --no-sft-comparison")
    log.info("original base = %s (the SFT model %s was fine-tuned from it)", ref, sft_model)
    return model.eval()
