"""The classifier reward model: labeled data, training on a tiny model (it learns a toy labeling),
the reward it gives (the positive logit or log-probability), and clear errors for bad labels."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from rlhf.data.formats import parse_row
from rlhf.data.validate import ValidateConfig, run_validation
from rlhf.errors import UserError
from rlhf.reward import outputs
from rlhf.reward.classifier import class_names, positive_index, reward_from_logits
from rlhf.reward.config import RewardConfig
from rlhf.reward.metrics import classification_metrics
from rlhf.reward.scorer import RewardScorer
from rlhf.reward.train import train_reward_model
from test_reward_helpers import REFUSALS, TOPICS, build_tiny_classifier, build_tiny_model, write_jsonl


def labeled_rows(n: int, seed: int = 0, names: bool = False) -> list[dict]:
    """A learnable toy labeling in the user format: an on-topic answer is class 1 ("good"), a
    refusal class 0 ("bad")."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        good = rng.random() < 0.5
        text = f"Sure! Here is a fact about {topic}: it is old." if good else rng.choice(REFUSALS)
        label = ("good" if good else "bad") if names else int(good)
        rows.append({"input_text": f"Tell me something about {topic}.", "output_text": text, "label": label})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    d = tmp_path_factory.mktemp("labeled")
    return {"ids": str(write_jsonl(d / "ids.jsonl", labeled_rows(200, seed=1))),
            "names": str(write_jsonl(d / "names.jsonl", labeled_rows(60, seed=2, names=True)))}


def _config(tiny, dataset, out, **kw) -> RewardConfig:
    base = dict(reward_model_type="classifier", labeled_dataset=dataset, output_dir=str(out),
                large_model_reference=tiny, reward_model_train_steps=24, batch_size=8,
                gradient_accumulation_steps=1, reward_model_learning_rate_multiplier=30, eval_every=12,
                log_every=12, checkpoint_every=0, lora_target_modules=["q_proj", "v_proj"],
                heldout_fraction=0.2)
    base.update(kw)
    return RewardConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny, labeled, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "classifier"
    return out, train_reward_model(_config(tiny, labeled["ids"], out))


# -- data -------------------------------------------------------------------------------------------

def test_labeled_rows_parse_in_text_and_chat_format():
    text = parse_row("labeled", {"input_text": "Hi", "output_text": "Hello", "label": 1})
    assert not text.errors and text.format == "labeled" and text.label == "1"
    assert text.rows[0].response == "Hello" and text.rows[0].label == 1
    chat = parse_row("labeled", {"messages": [{"author": "user", "content": "Hi"}], "output_text": "Yo",
                                 "label": "rude"})
    assert not chat.errors and chat.format == "labeled_names_chat" and chat.rows[0].label == "rude"


@pytest.mark.parametrize("row, message", [
    ({"input_text": "Hi", "label": 1}, "missing field `output_text`"),
    ({"input_text": "Hi", "output_text": "x"}, "missing field `label`"),
    ({"input_text": "Hi", "output_text": "x", "label": True}, "not a boolean: write 1"),
    ({"input_text": "Hi", "output_text": "x", "label": -1}, "`label` is a number (-1)"),
    ({"input_text": "Hi", "output_text": "x", "label": 1.0}, "write 1"),
    ({"input_text": "Hi", "output_text": " ", "label": 0}, "`output_text` contains only whitespace"),
])
def test_bad_labeled_rows_say_what_is_wrong(row, message):
    parsed = parse_row("labeled", row)
    assert any(message in e for e in parsed.errors), parsed.errors


def test_validation_reports_lines_and_label_balance(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"input_text": "a", "output_text": "b", "label": 1},
        {"input_text": "a", "output_text": "c", "label": "good"}])
    report = run_validation(ValidateConfig(labeled_dataset=str(bad)))
    assert not report.ok
    assert report.problems.lines()[0].startswith(f"{bad}:2: the format changes here to labeled, class names")

    good = write_jsonl(tmp_path / "good.jsonl", labeled_rows(10, seed=3))
    report = run_validation(ValidateConfig(labeled_dataset=str(good), output_dir=str(tmp_path / "out")))
    assert report.ok
    ones = sum(r["label"] for r in labeled_rows(10, seed=3))
    assert report.stats["datasets"]["labeled"]["labels"] == {
        "0": {"rows": 10 - ones, "fraction": round((10 - ones) / 10, 4)},
        "1": {"rows": ones, "fraction": round(ones / 10, 4)}}
    assert report.metrics["data/labeled_label_1_fraction"] == round(ones / 10, 4)
    assert "Label balance of the labeled data" in (tmp_path / "out" / "summary.md").read_text()
    canonical = [json.loads(x) for x in (tmp_path / "out" / "labeled.jsonl").read_text().splitlines()]
    assert len(canonical) == 10 and canonical[0]["source"] == f"{good}:1"


def test_bundled_labeled_data_is_valid_and_has_both_classes():
    from rlhf.samples import SAMPLE_DIR
    report = run_validation(ValidateConfig(labeled_dataset=str(SAMPLE_DIR / "labeled.jsonl")))
    assert report.ok, report.problem_text()
    labels = report.stats["datasets"]["labeled"]["labels"]
    assert set(labels) == {"0", "1"} and min(b["rows"] for b in labels.values()) >= 20


def test_classes_and_positive_label():
    from rlhf.data.canonical import LabeledExample
    ex = lambda label: LabeledExample([{"role": "user", "content": "x"}], "y", label)  # noqa: E731
    assert class_names([ex(2), ex(0)]) == ["0", "1", "2"]  # class i is label i
    assert class_names([ex("toxic"), ex("fine")]) == ["fine", "toxic"]
    assert positive_index(["fine", "toxic"], "fine", "x") == 0
    with pytest.raises(UserError, match=r"positive_label '1' is not a class of x \(its classes: 'fine', 'toxic'\)"):
        positive_index(["fine", "toxic"], "1", "x")


# -- reward and metrics -----------------------------------------------------------------------------

def test_reward_is_the_positive_logit_or_its_log_probability():
    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, -2.0, 0.0]])
    assert torch.equal(reward_from_logits(logits, 1), torch.tensor([2.0, -2.0]))
    expected = logits[:, 1] - torch.logsumexp(logits, dim=-1)
    assert torch.allclose(reward_from_logits(logits, 1, "logprob"), expected)


def test_classification_metrics_against_hand_counts():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    labels = np.array([0, 1, 0, 1])  # predicted 0, 1, 1, 0: one right per class
    m = classification_metrics(logits, labels, ["no", "yes"], positive=1, prefix="h")
    assert m["h/accuracy"] == 0.5 and m["h/confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["h/yes/precision"] == 0.5 and m["h/yes/recall"] == 0.5 and m["h/yes/f1"] == 0.5
    # P(yes) of the positives (0.73, 0.38) against the negatives (0.12, 0.95): 2 of 4 orderings right
    assert m["h/yes/roc_auc"] == 0.5 and m["h/roc_auc"] == 0.5
    ce = -np.mean([np.log(np.exp(l[y]) / np.exp(l).sum()) for l, y in zip(logits, labels)])
    assert m["h/loss"] == pytest.approx(ce)


# -- training -----------------------------------------------------------------------------------------

def test_tiny_classifier_learns_the_toy_labeling(trained):
    out, result = trained
    m = result.metrics
    assert m["heldout/examples"] == 40
    assert m["heldout/accuracy"] >= 0.95 and m["heldout/roc_auc"] >= 0.95 and m["heldout/1/f1"] >= 0.9
    assert result.normalization == {"mean": 0.0, "std": 1.0, "pairs": 0}
    info = outputs.read_info(str(out))
    assert info["reward_model_type"] == "classifier" and info["labels"] == ["0", "1"]
    assert info["positive_label"] == "1" and info["reward_from"] == "logit"
    assert "heldout/roc_auc" in json.loads((out / "metrics.json").read_text())


def test_stratified_split_holds_out_every_class_and_leaves_each_one_to_train():
    from rlhf.reward.data import split_stratified
    labels = [0] * 271 + [1] * 49  # the bundled labeled data's balance
    train, held = split_stratified(labels, 0.1, 1000, seed=0)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(320))
    assert np.bincount(np.array(labels)[held]).tolist() == [27, 5]  # each class's own share
    rare = [0] * 50 + [1] * 2  # a class too small for a 10% share still gets one held out, keeps one
    train, held = split_stratified(rare, 0.1, 1000, seed=0)
    assert np.bincount(np.array(rare)[held]).tolist() == [5, 1] and 1 in np.array(rare)[train]
    assert split_stratified(rare, 0.0, 1000, seed=0)[1].size == 0


def test_balanced_class_weights_give_every_class_the_same_total_weight():
    from rlhf.reward.classifier import class_weights
    labels = [0] * 9 + [1] * 3
    w = class_weights(labels, 3)  # class 2 has no examples
    assert w[0] * 9 == pytest.approx(w[1] * 3) and w[2] == 1.0
    assert sum(w[c] for c in labels) / len(labels) == pytest.approx(1.0)  # mean weight 1: same step size
    assert class_weights(labels, 2, "none") == [1.0, 1.0]


def test_class_balancing_learns_a_rare_class(tiny, tmp_path):
    """One positive in ten: plain cross-entropy settles on "always class 0" (F1 0 on the rare class),
    the balanced loss learns it."""
    rng = random.Random(3)
    rows = []
    for _ in range(200):
        topic, good = rng.choice(TOPICS), rng.random() < 0.1
        text = f"Sure! Here is a fact about {topic}: it is old." if good else rng.choice(REFUSALS)
        rows.append({"input_text": f"Tell me something about {topic}.", "output_text": text, "label": int(good)})
    data = str(write_jsonl(tmp_path / "rare.jsonl", rows))
    f1 = {}
    for weighting in ("balanced", "none"):
        m = train_reward_model(_config(tiny, data, tmp_path / weighting, class_weighting=weighting,
                                       eval_every=24)).metrics
        assert m["heldout/confusion_matrix"][1] and sum(m["heldout/confusion_matrix"][1]) == 4  # stratified
        f1[weighting] = m["heldout/1/f1"]
    assert f1["balanced"] >= 0.8 > 0.2 >= f1["none"]


def test_scorer_reward_is_the_positive_logit(trained):
    out, _ = trained
    scorer = RewardScorer(str(out))
    messages = [[{"role": "user", "content": "Tell me something about tea."}]] * 2
    responses = ["Sure! Here is a fact about tea: it is old.", REFUSALS[0]]
    scores = scorer.score(messages, responses)
    logits = scorer.logits(messages, responses)
    assert logits.shape == (2, 2)
    np.testing.assert_allclose(scores.raw, logits[:, 1], rtol=1e-6)
    assert scores.raw[0] > scores.raw[1]  # the learned labeling: the answer beats the refusal


def test_class_names_and_a_missing_positive_label(tiny, labeled, tmp_path):
    with pytest.raises(UserError, match=r"positive_label '1' is not a class of labeled_dataset .*'bad', 'good'"):
        train_reward_model(_config(tiny, labeled["names"], tmp_path / "a"))
    result = train_reward_model(_config(tiny, labeled["names"], tmp_path / "b", positive_label="good",
                                        reward_from="logprob", reward_model_train_steps=2))
    assert "heldout/good/roc_auc" in result.metrics
    info = outputs.read_info(str(tmp_path / "b"))
    assert info["labels"] == ["bad", "good"] and info["reward_from"] == "logprob"


def test_config_requires_the_dataset_of_its_type():
    with pytest.raises(UserError, match="--labeled-dataset .*is required with reward_model_type classifier"):
        RewardConfig(reward_model_type="classifier", output_dir="x").validate()
    with pytest.raises(UserError, match="--preference-dataset .*is required with reward_model_type pairwise"):
        RewardConfig(output_dir="x").validate()
    RewardConfig(reward_model_type="classifier", output_dir="x").validate(inputs=False)


# -- PPO ----------------------------------------------------------------------------------------------

def _rollout(tok, messages, texts):
    from rlhf.encoding import encode_prompt, encode_response
    from rlhf.ppo.prompts import left_pad
    from rlhf.ppo.rollout import Rollout
    prompts = [encode_prompt(tok, m, True, 64) for m in messages]
    responses = [encode_response(tok, t, add_eos=True) for t in texts]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    width = max(len(r) for r in responses)
    resp = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in responses])
    rmask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in responses])
    return Rollout(ids, mask, resp, rmask, torch.zeros_like(rmask), torch.zeros_like(rmask), None,
                   torch.ones(len(texts), dtype=torch.bool), prompt_index=list(range(len(texts))))


def test_ppo_reward_on_a_shared_base_is_the_positive_logit(trained, tiny):
    """The shared-base path (the positive row of the score head on the policy's trunk) gives the
    scorer's positive logit; the log-probability needs every class, so it is loaded apart."""
    from rlhf import models
    from rlhf.ppo.policy import SharedBaseModel
    from rlhf.ppo.reward import SeparateReward, SharedBaseReward, build_reward
    out, _ = trained
    tok = models.load_tokenizer(tiny, padding_side="left")
    messages = [[{"role": "user", "content": f"Tell me something about {t}."}] for t in ("tea", "maps")]
    texts = ["Sure! Here is a fact about tea: it is old.", REFUSALS[1]]
    rollout = _rollout(tok, messages, texts)
    model = SharedBaseModel(models.load_causal_lm(tiny, device="cpu"), lora_target_modules=["q_proj"])
    info = outputs.read_info(str(out))
    shared = build_reward(str(out), info, model, tiny, tiny, tok, messages, device="cpu")
    assert isinstance(shared, SharedBaseReward)
    expected = RewardScorer(str(out), device="cpu").logits(messages, texts)[:, 1]
    torch.testing.assert_close(shared(rollout), torch.tensor(expected, dtype=torch.float32), atol=1e-4, rtol=1e-4)

    apart = build_reward(str(out), {**info, "reward_from": "logprob"}, model, tiny, tiny, tok, messages, device="cpu")
    assert isinstance(apart, SeparateReward)
    with pytest.raises(UserError, match="positive_label 'toxic' is not a class"):
        build_reward(str(out), info, model, tiny, tiny, tok, messages, device="cpu", positive_label="toxic")


def test_ppo_raises_the_positive_class_probability(tmp_path, one_thread):
    """PPO on a tiny policy (16-token vocabulary) with the classifier reward of this module: the
    positive class's log-probability at the response's last token (``score_sequences`` then
    ``reward_from_logits``), from a random two-class classifier. Rising rewards are a rising
    P(positive)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from rlhf.ppo.outputs import OutputLayout
    from rlhf.ppo.trainer import PPOTrainer
    from rlhf.reward.modeling import score_sequences
    from test_ppo_train import IdTokenizer, tiny_model, toy_config, toy_prompts
    torch.manual_seed(3)
    classifier = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=2, initializer_range=0.5)).eval().requires_grad_(False)

    def reward(rollout):
        ids = torch.cat([rollout.input_ids, rollout.response_ids], 1)
        mask = torch.cat([rollout.attention_mask, rollout.response_mask.long()], 1)
        with torch.no_grad():
            return reward_from_logits(score_sequences(classifier, ids, mask), 1, "logprob")

    trainer = PPOTrainer(toy_config(reinforcement_learning_train_steps=30), tiny_model(), IdTokenizer(),
                         toy_prompts(), reward, OutputLayout(str(tmp_path)))
    trainer.train()
    probability = [math.exp(row["reward/mean"]) for row in trainer.tracker.history]  # ~ mean P(positive)
    # seen: 0.17 over the first five steps, 0.41 over the last five
    assert np.mean(probability[-5:]) > np.mean(probability[:5]) + 0.1, probability


def test_tune_runs_on_a_trained_classifier_with_log_probability_rewards(tiny, labeled, tmp_path):
    """PPO's step end to end with a classifier reward model (loaded apart for the log-probability)."""
    from rlhf.ppo.config import PPOConfig
    from rlhf.ppo.run import tune
    rm = tmp_path / "rm"
    train_reward_model(_config(tiny, labeled["ids"], rm, reward_from="logprob", reward_model_train_steps=4))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": f"Tell me something about {t}."}
                                                       for t in TOPICS])
    tune(PPOConfig(prompt_dataset=str(prompts), reward_model=str(rm), output_dir=str(tmp_path / "ppo"),
                   large_model_reference=tiny, reinforcement_learning_train_steps=2, batch_size=4,
                   mini_batch_size=2, ppo_epochs=1, target_sequence_length=4, checkpoint_every=0,
                   sample_count=0, device="cpu"))
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    assert len(rewards) == 2 and all(-30 < r < 0 for r in rewards)  # log-probabilities




# -- an existing Hugging Face classifier -------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    """A tiny random Hugging Face sequence classifier with named classes and its own tokenizer."""
    return build_tiny_classifier(tmp_path_factory.mktemp("hf") / "sentiment")


def test_an_existing_classifier_scores_the_response_alone(hf_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from rlhf.reward.hf_classifier import ClassifierScorer
    from rlhf.reward.scorer import load_scorer
    info = outputs.read_info(str(hf_classifier))
    assert info["reward_model_type"] == "hf_classifier" and info["labels"] == ["negative", "positive"]
    scorer = load_scorer(str(hf_classifier), "positive", device="cpu")
    assert isinstance(scorer, ClassifierScorer)
    texts = ["A calm and happy day.", "Terrible, awful, no."]
    messages = [[{"role": "user", "content": "How was it?"}]] * 2
    tok = AutoTokenizer.from_pretrained(hf_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(hf_classifier).eval()
    with torch.no_grad():
        expected = model(**tok(texts, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(scorer.score_messages(messages, texts).raw, expected[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(scorer.probabilities(messages, texts), expected.softmax(-1)[:, 1].numpy(),
                               rtol=1e-5)


def test_an_existing_classifier_without_the_positive_label_is_a_clear_error(hf_classifier, tiny):
    from rlhf import models
    from rlhf.ppo.policy import SharedBaseModel
    from rlhf.ppo.reward import SeparateReward, build_reward
    from rlhf.reward.scorer import load_scorer
    with pytest.raises(UserError, match=r"positive_label 'toxic' is not a class of the classifier .*"
                                        r"'negative', 'positive'"):
        load_scorer(str(hf_classifier), "toxic", device="cpu")
    model = SharedBaseModel(models.load_causal_lm(tiny, device="cpu"), lora_target_modules=["q_proj"])
    tok = models.load_tokenizer(tiny, padding_side="left")
    reward = build_reward(str(hf_classifier), outputs.read_info(str(hf_classifier)), model, tiny, tiny, tok,
                          [[{"role": "user", "content": "Hi"}]], device="cpu", positive_label="positive")
    assert isinstance(reward, SeparateReward)  # its own model and tokenizer, never the policy's base
    rollout = _rollout(tok, [[{"role": "user", "content": "Hi"}]], ["Hello there."])
    expected = load_scorer(str(hf_classifier), "positive", device="cpu").score_messages([[]], ["Hello there."]).raw
    torch.testing.assert_close(reward(rollout), torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)


# -- classifiers in evaluation --------------------------------------------------------------------------

def test_eval_classifier_metrics_per_prompt_values_report_row_and_summary():
    from rlhf.evaluate import report
    from rlhf.evaluate.results import compute_results
    from test_eval_results import ROWS, gens
    probs = {"base": [0.2, 0.6, 0.4], "tuned": [0.7, 0.9, 0.3]}
    results = compute_results(ROWS, gens(), classifiers={"positive@sentiment": probs})
    m = results.metrics
    assert m["eval/classifier/positive@sentiment/base_mean"] == pytest.approx(0.4)
    assert m["eval/classifier/positive@sentiment/tuned_mean"] == pytest.approx(0.6333333)
    assert m["eval/classifier/positive@sentiment/base_above_half"] == pytest.approx(1 / 3)
    assert m["eval/classifier/positive@sentiment/tuned_above_half"] == pytest.approx(2 / 3)
    assert m["eval/classifier/positive@sentiment/delta"] == pytest.approx(0.2333333)
    assert results.per_prompt[1]["tuned"]["classifiers"] == {"positive@sentiment": 0.9}
    assert results.per_prompt[2]["base"]["classifiers"] == {"positive@sentiment": 0.4}
    html = report.render_html(results)
    assert "Classifier positive@sentiment: mean probability</td><td class='num'>0.400</td><td class='num'>0.633" in html
    assert "- Classifier positive@sentiment: mean probability 0.400 → 0.633 (+0.233)" in report.render_markdown(results)


def test_eval_classifiers_score_base_and_tuned_responses(hf_classifier, trained):
    from rlhf.data.canonical import EvalExample
    from rlhf.evaluate.classifiers import parse, score_all
    from rlhf.evaluate.config import EvalConfig
    from rlhf.reward.scorer import load_scorer
    rows = [EvalExample(messages=[{"role": "user", "content": f"Tell me something about {t}."}])
            for t in ("tea", "maps")]
    texts = {"base": [REFUSALS[0], "Sure! Here is a fact about maps: it is old."],
             "tuned": ["Sure! Here is a fact about tea: it is old.", REFUSALS[2]]}
    out, _ = trained
    specs = [f"{hf_classifier}=positive", f"{out}=1"]
    scores = score_all(specs, rows, texts, device="cpu")
    assert list(scores) == ["positive@sentiment", "1@classifier"]
    direct = load_scorer(str(hf_classifier), "positive", device="cpu")
    assert scores["positive@sentiment"]["base"] == pytest.approx(list(direct.probabilities([[]] * 2, texts["base"])))
    learned = scores["1@classifier"]  # the trained classifier prefers the on-topic answers
    assert learned["tuned"][0] > 0.5 > learned["tuned"][1] and learned["base"][1] > 0.5 > learned["base"][0]
    with pytest.raises(UserError, match="expected REF=LABEL"):
        parse(["no-label"])
    assert EvalConfig(eval_classifiers=["x"]).problems(inputs=False)[0].name == "eval_classifiers"


# -- the pipeline -------------------------------------------------------------------------------------

def test_a_classifier_reads_its_training_instruction_as_eval_classifier_and_as_reward(trained, tmp_path):
    """A row without an instruction gets the one saved with a classifier, in the classifier rows and in
    the reward rows alike: both score in one pass with the prompt as the classifier was trained on."""
    import shutil
    from rlhf.data.canonical import EvalExample
    from rlhf.evaluate.classifiers import score_all
    from rlhf.evaluate.config import EvalConfig
    from rlhf.evaluate.run import reward_scores
    out, _ = trained
    instructed = tmp_path / "instructed"
    shutil.copytree(out, instructed)
    info = json.loads((instructed / outputs.INFO_FILE).read_text())
    (instructed / outputs.INFO_FILE).write_text(json.dumps({**info, "instruction": "Answer in French."}))
    rows = [EvalExample(messages=[{"role": "user", "content": f"Tell me something about {t}."}])
            for t in ("tea", "maps")]
    texts = {"base": [REFUSALS[0], "Sure! Here is a fact about maps: it is old."]}
    as_classifier = score_all([f"{instructed}=1"], rows, texts, device="cpu")["1@instructed"]["base"]
    as_reward = reward_scores(str(instructed), rows, texts, EvalConfig(device="cpu"), "cpu").probabilities["base"]
    assert as_classifier == pytest.approx(as_reward, rel=1e-5)
    without = score_all([f"{out}=1"], rows, texts, device="cpu")["1@classifier"]["base"]
    assert as_classifier != pytest.approx(without, rel=1e-5)  # the instruction was read


def test_run_local_fills_the_bundled_labeled_data_for_a_classifier_only():
    from rlhf import samples
    from rlhf.commands.run_local import bundled_labeled_dataset
    values, sources = {"reward_model_type": "classifier"}, {}
    bundled_labeled_dataset(values, sources)
    assert values["labeled_dataset"] == samples.labeled_dataset() and sources["labeled_dataset"]
    mine = {"reward_model_type": "classifier", "labeled_dataset": "mine.jsonl"}
    bundled_labeled_dataset(mine, {})
    assert mine["labeled_dataset"] == "mine.jsonl"
    pairwise = {"reward_model_type": "pairwise"}
    bundled_labeled_dataset(pairwise, {})
    assert "labeled_dataset" not in pairwise


def test_a_classifier_without_labeled_data_is_refused_before_anything_runs(tmp_path):
    from rlhf import parameters
    from rlhf.commands.compile import compile_pipeline
    template = parameters.load_template(compile_pipeline("kfp", str(tmp_path / "kfp.yaml")))
    values = {"prompt_dataset": "p.jsonl", "preference_dataset": "q.jsonl", "large_model_reference": "m",
              "reward_model_type": "classifier"}
    with pytest.raises(UserError, match="reward_model_type classifier needs labeled data: set labeled_dataset"):
        parameters.check_parameters(template, values, {k: "--parameter" for k in values})
    with pytest.raises(UserError, match="reward_model_type 'ranking'"):
        parameters.check_parameters(template, {**values, "reward_model_type": "ranking"}, {})


@pytest.mark.slow  # the whole pipeline through kfp's local runner (~1-2 min on 2 cores)
def test_run_local_with_a_classifier_reward_model(tiny, tmp_path, capsys, monkeypatch):
    """`rlhf run-local --parameter reward_model_type=classifier`: validation writes the bundled labeled
    data canonically, the reward stage trains a classifier on it, PPO and evaluation score with it."""
    import tempfile

    from rlhf import cli
    from rlhf.commands.run_local import evaluation_summary, find_outputs
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # kfp's local runner leaves folders there
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    root = tmp_path / "root"
    code = cli.main([
        "run-local", "--pipeline-root", str(root), "--model", tiny, "--parameter", "reward_model_type=classifier",
        "--parameter", "supervised_tuning=off",  # the classifier path alone (run-local picks PPO for it)
        "--reward-model-train-steps", "2", "--reinforcement-learning-train-steps", "1",
        "--prompt-sequence-length", "64", "--target-sequence-length", "8",
        "--parameter", "reward_model_batch_size=2", "--parameter", "reinforcement_learning_batch_size=2",
        "--parameter", 'reinforcement_learning_options={"mini_batch_size": 2, "ppo_epochs": 1}',
        "--parameter", "evaluation_batch_size=4", "--parameter", "evaluation_max_examples=4"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    (run,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found = find_outputs(run)
    labeled = [json.loads(line) for line in found["validate-inputs/labeled_data"].read_text().splitlines()]
    assert len(labeled) == 800 and {r["label"] for r in labeled} == {0, 1}  # canonical rows
    info = outputs.read_info(str(found["train-reward-model/reward_model"]))
    assert info["reward_model_type"] == "classifier" and info["labels"] == ["0", "1"]
    assert (found["tune-policy/policy_adapter"] / "adapter_config.json").exists()
    summary = evaluation_summary(run)
    assert summary is not None and summary.read_text() in stdout
    assert "(classifier, class '1' logit)" in summary.read_text()  # what the reward-model row scores
    assert "- Classifier 1@reward_model: mean probability" in summary.read_text()  # and its P(class 1)


def test_ppo_and_evaluation_take_an_existing_classifier_as_the_reward_model(hf_classifier, tiny, tmp_path):
    """PPO's reward and evaluation's reward rows from a Hugging Face classifier, its class named by
    positive_label (which it must have)."""
    from rlhf.evaluate.config import EvalConfig
    from rlhf.evaluate.run import reward_scores
    from rlhf.ppo.config import PPOConfig
    from rlhf.ppo.run import tune
    from rlhf.reward.hf_classifier import ClassifierScorer
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": f"Tell me something about {t}."}
                                                       for t in TOPICS])
    ppo = dict(prompt_dataset=str(prompts), reward_model=str(hf_classifier), large_model_reference=tiny,
               reinforcement_learning_train_steps=1, batch_size=4, mini_batch_size=2, ppo_epochs=1,
               target_sequence_length=4, checkpoint_every=0, sample_count=0, device="cpu")
    with pytest.raises(UserError, match="positive_label '' is not a class of the classifier"):
        tune(PPOConfig(**ppo, output_dir=str(tmp_path / "none")))
    tune(PPOConfig(**ppo, output_dir=str(tmp_path / "ppo"), positive_label="positive"))
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if math.isfinite(r.get("reward/mean", math.nan))]

    from rlhf.data.canonical import EvalExample
    examples = [EvalExample([{"role": "user", "content": "How was it?"}], "x")] * 2
    texts = {"base": ["A calm and happy day.", "Terrible, awful, no."], "tuned": ["Fine.", "Great!"]}
    got = reward_scores(str(hf_classifier), examples, texts,
                        EvalConfig(positive_label="negative", device="cpu", batch_size=2), "cpu")
    direct = ClassifierScorer(str(hf_classifier), "negative", device="cpu")
    for name, responses in texts.items():
        np.testing.assert_allclose(got.raw[name], direct.score_messages([[]] * 2, responses).raw, rtol=1e-5)
        # and the reward class's probability, which evaluation reports as a classifier row
        expected = torch.softmax(torch.from_numpy(direct.logits(responses)), dim=-1)[:, direct.positive].numpy()
        np.testing.assert_allclose(got.probabilities[name], expected, rtol=1e-5)
    assert got.label == "negative"
