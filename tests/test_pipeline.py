"""The whole pipeline run by kfp's local runner on a tiny model: the compiled Kubeflow YAML loaded back
and run on datasets served by the Cloud Storage emulator, and the pipeline built from the code
without an eval dataset. Then the tuned adapter is merged for serving, as the deploy stage does."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from rlhf import cli, samples
from rlhf.commands.compile import compile_pipeline
from rlhf.commands.run_local import evaluation_summary, find_outputs
from test_reward_helpers import build_tiny_model

pytestmark = pytest.mark.slow

# A 2-layer model and a few steps of everything: the point is the wiring, not the learning.
STEP_SETTINGS = [
    "--reward-model-train-steps", "2", "--reinforcement-learning-train-steps", "2",
    "--prompt-sequence-length", "64", "--target-sequence-length", "8",
    "--parameter", "reward_model_batch_size=2",
    "--parameter", "reinforcement_learning_batch_size=2",
    "--parameter", 'reinforcement_learning_options={"mini_batch_size": 2, "ppo_epochs": 1}',
    "--parameter", "evaluation_batch_size=8", "--parameter", "evaluation_max_examples=8",
]
# The pipeline's own path; run-local's demo adds SFT and DPO (test_run_local_defaults_...).
TINY_SETTINGS = [*STEP_SETTINGS, "--parameter", "supervised_tuning=off", "--parameter", "tuning_method=ppo"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def quiet_tmp(tmp_path_factory):
    """kfp's local runner leaves kfp-workspace-* and tmp.* folders in the temp dir: keep them here."""
    directory = tmp_path_factory.mktemp("tmpdir")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(directory))
        mp.setenv("TMPDIR", str(directory))
        yield directory


def _run_dir(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def gcs_run(gcs_emulator, tiny_model, quiet_tmp, tmp_path_factory):
    """The compiled Kubeflow YAML, loaded back and run locally on gs:// datasets."""
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    uris = {}
    for name, path in (("preference", samples.preference_dataset()), ("prompts", samples.prompt_dataset()),
                       ("eval", samples.eval_dataset())):
        blob = bucket.blob(f"test-pipeline/{name}.jsonl")
        blob.upload_from_filename(path)
        uris[name] = f"gs://{gcs_emulator.bucket}/{blob.name}"
    out = tmp_path_factory.mktemp("gcs-run")
    template = compile_pipeline("kfp", str(out / "kfp.yaml"))
    root = out / "root"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["run-local", "--template", template, "--pipeline-root", str(root),
                         "--preference-dataset", uris["preference"], "--prompt-dataset", uris["prompts"],
                         "--eval-dataset", uris["eval"], "--instruction", samples.INSTRUCTION,
                         "--model", str(tiny_model), *TINY_SETTINGS])
    return code, root, buffer.getvalue()


def test_compiled_yaml_runs_end_to_end_on_gcs_datasets(gcs_run):
    code, root, stdout = gcs_run
    assert code == 0, stdout[-3000:]
    run = _run_dir(root)
    outputs = find_outputs(run)
    for key in ("validate-inputs/preference_data", "validate-inputs/prompt_data", "validate-inputs/eval_data",
                "train-reward-model/reward_model", "tune-policy/policy_adapter", "evaluate-model/report",
                "evaluate-model/summary"):
        assert key in outputs, sorted(outputs)
    # every sample preference row became one canonical pair (Google's text format: one pair per row)
    rows = [json.loads(line) for line in outputs["validate-inputs/preference_data"].read_text().splitlines()]
    with open(samples.preference_dataset()) as f:
        assert len(rows) == sum(1 for line in f if line.strip())
    assert rows[0]["instruction"] == samples.INSTRUCTION
    assert (outputs["tune-policy/policy_adapter"] / "adapter_config.json").exists()
    summary = evaluation_summary(run)
    assert summary is not None and summary.read_text() in stdout  # printed at the end
    assert "tuned vs base" in summary.read_text()
    assert str(run) in stdout


def test_pipeline_without_eval_dataset_skips_evaluation(tiny_model, quiet_tmp, tmp_path, capsys):
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--eval-dataset", "",
                     "--model", str(tiny_model), *TINY_SETTINGS])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    run = _run_dir(root)
    assert not (run / "evaluate-model").exists()
    assert "no evaluation ran" in stdout
    outputs = find_outputs(run)
    assert "tune-policy/policy_adapter" in outputs
    skipped = json.loads((run / "deployment-skipped" / "executor_output.json").read_text())
    assert skipped["parameterValues"] == {"model_resource_name": "", "endpoint_resource_name": ""}


def test_run_local_defaults_fine_tune_then_tune_with_dpo_and_compare_all_three(tiny_model, quiet_tmp, tmp_path,
                                                                               capsys):
    """run-local's demo path (SFT on the preferred candidates, then DPO from the SFT model), with
    step counts for a tiny model; the evaluation compares base, SFT and tuned."""
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *STEP_SETTINGS,
                     "--parameter", 'sft_options={"sft_train_steps": 2, "batch_size": 2}',
                     "--parameter", 'dpo_options={"gradient_accumulation_steps": 1}'])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    outputs = find_outputs(_run_dir(root))
    sft_model = outputs["supervised-fine-tuning/sft_model"]
    assert (sft_model / "rlhf_sft.json").exists()
    adapter = outputs["tune-policy/policy_adapter"]
    assert (adapter.parent / "dpo_run").is_dir() and not (adapter.parent / "ppo_run").exists()  # DPO, not PPO
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft_model)
    summary = evaluation_summary(_run_dir(root)).read_text()
    assert "tuned vs SFT vs base" in summary and "over the SFT model" in summary


def test_the_tuned_adapter_merges_into_a_servable_model(gcs_run, tiny_model, tmp_path):
    """What the Vertex deploy stage does before uploading: merge the LoRA policy into its base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.deploy import merge_adapter

    code, root, _ = gcs_run
    assert code == 0
    adapter = find_outputs(_run_dir(root))["tune-policy/policy_adapter"]
    out = tmp_path / "merged"
    assert merge_adapter(str(adapter), str(out)) == str(tiny_model)  # the base PPO recorded
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    assert (out / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = reference(ids).logits
        got = merged(ids).logits
    # bf16 merge: equal up to bf16 rounding of the weights
    assert torch.allclose(got, expected, atol=5e-2, rtol=5e-2)
    shutil.rmtree(out)
