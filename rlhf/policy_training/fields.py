"""The settings the LoRA-policy steps (DPO, SFT) declare alike, each declared once here in the style
of ``rlhf.settings``' shared fields (a function per field, so each config keeps its own field
order, hence its flags and ``--help``), and ``LoRAPolicySettings``, the base of their configs.

``unit`` is what a batch holds ("preference pairs", "examples"); a default that differs between
the steps is an argument, so each config still states its own.
"""

from __future__ import annotations

from typing import Any

from rlhf.settings import Settings, non_negative, not_empty, one_of, positive, setting, within


class LoRAPolicySettings(Settings):
    """Base of the configs of steps that train the LoRA policy on fixed data (no fields of its own)."""

    @property
    def target_modules(self):
        """The peft target_modules value (`all-linear` is peft's shorthand)."""
        mods = list(self.lora_target_modules)
        return mods[0] if mods == ["all-linear"] else mods


# -- schedule -------------------------------------------------------------------------------------

def train_steps(default: int, step: str) -> Any:
    return setting(default, f"{step} optimizer steps", positive)


def learning_rate_multiplier(base_learning_rate: float) -> Any:
    return setting(1.0, f"learning rate = multiplier × {base_learning_rate:g} (AdamW)", positive)


def batch_size(unit: str) -> Any:
    return setting(16, f"{unit} per forward pass, over all devices: N devices take batch_size/N each", positive)


def gradient_accumulation_steps(unit: str) -> Any:
    return setting(1, f"forward passes per optimizer step; {unit} per step = batch_size × this", positive)


def warmup_ratio(default: float) -> Any:
    return setting(default, "fraction of the steps over which the learning rate rises linearly from 0",
                   within(0, 1, high_open=True))


def lr_scheduler(default: str) -> Any:
    return setting(default, "after warmup: linear (decay to 0), cosine or constant",
                   one_of("linear", "cosine", "constant"))


def max_grad_norm() -> Any:
    return setting(1.0, "gradient norm clip; 0 disables clipping", non_negative)


def max_heldout(unit: str) -> Any:
    return setting(500, f"cap on held-out {unit}", non_negative)


# -- model ----------------------------------------------------------------------------------------

def lora_rank(help: str = "LoRA rank") -> Any:
    return setting(8, help, positive)


def lora_alpha() -> Any:
    return setting(16.0, "LoRA alpha", positive)


def lora_dropout(default: float, help: str = "LoRA dropout in the training passes") -> Any:
    return setting(default, help, within(0, 1, high_open=True))


def lora_target_modules(help: str = "modules LoRA adapts (or all-linear)") -> Any:
    return setting(help=help, check=not_empty, default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


# -- run ------------------------------------------------------------------------------------------

def keep_checkpoints() -> Any:
    return setting(2, "newest checkpoints kept", positive)


def log_every() -> Any:
    return setting(10, "steps between log lines", positive)


def tensorboard_dir() -> Any:
    return setting("", "TensorBoard event files (default: OUTPUT_DIR/tensorboard)")
