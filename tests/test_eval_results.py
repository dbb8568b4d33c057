"""Computing an evaluation's results (rlhf.evaluate.results) from plain lists, no model: the metrics
agree with the per-prompt rows, what was skipped is noted, the alarm needs both scorers."""

import pytest

from rlhf.data.canonical import EvalExample
from rlhf.evaluate.inference import Generation
from rlhf.evaluate.kl import KLResult
from rlhf.evaluate.results import RewardScores, compute_results
from rlhf.judge import JudgeResult

ROWS = [EvalExample(messages=[{"role": "user", "content": f"post {i}"}], source=f"eval.jsonl:{i + 1}",
                    reference="the cat sat" if i < 2 else None) for i in range(3)]
TEXTS = {"base": ["the cat", "a dog ran", "hello"], "tuned": ["the cat sat", "a dog", "hi there you"]}


def gens(finished=(True, False, True)):
    return {name: [Generation(prompt_ids=[1], response_ids=list(range(len(t.split()) + 1)), text=t, finished=f)
                   for t, f in zip(texts, finished)] for name, texts in TEXTS.items()}


def verdicts(base, tuned):
    return {name: [JudgeResult(score=s, rules={"concise": s}, notes=[f"note {s}"]) for s in scores]
            for name, scores in (("base", base), ("tuned", tuned))}


def test_metrics_summarize_the_per_prompt_rows_and_samples_come_from_them():
    kl = KLResult(0.01, 0.2, 0.02, 0.3, [0.1, 0.2, 0.3], [0.2, 0.3, 0.4], tokens=9)
    reward = RewardScores(raw={"base": [0.0, 1.0, 2.0], "tuned": [1.0, 1.0, 3.0]},
                          normalized={"base": [0.0, 0.5, 1.0], "tuned": [0.5, 0.5, 1.5]})
    results = compute_results(ROWS, gens(), kl=kl, reward=reward,
                              verdicts=verdicts([0.2, 0.4, 0.6], [0.5, 0.4, 0.9]), timing={"time/eval_generation_tuned_s": 1.0}, num_samples=2)
    m, rows = results.metrics, results.per_prompt
    assert m["eval/num_prompts"] == 3 and m["time/eval_generation_tuned_s"] == 1.0
    assert m["eval/reward_delta"] == pytest.approx(2 / 3) and m["eval/reward_win_rate"] == pytest.approx(2.5 / 3)  # a tie counts half
    assert m["eval/judge_win_rate"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["eval/length_tokens_base_mean"] == pytest.approx((3 + 4 + 2) / 3)
    assert m["eval/eos_tuned_fraction"] == pytest.approx(2 / 3) and m["eval/kl_seq"] == 0.2
    assert m["eval/num_with_reference"] == 2 and m["eval/rouge_l_tuned"] == pytest.approx(0.5)  # 1.0, 0.0
    assert [r["tuned"]["judge"] for r in rows] == [0.5, 0.4, 0.9] and rows[2]["tuned"]["rouge_l"] is None
    assert rows[1]["kl_seq"] == 0.2 and rows[0]["base"]["judge_notes"] == ["note 0.2"]
    assert results.judge_rules == {"base": {"concise": pytest.approx(0.4)}, "tuned": {"concise": pytest.approx(0.6)}}
    assert [s.tuned for s in results.samples] == TEXTS["tuned"][:2] and results.samples[1].reference == "the cat sat"
    assert results.samples[0].reward_tuned == 1.0 and results.samples[0].judge_notes_base == ["note 0.2"]
    # reward up while the judge also rose: no alarm; no pair rows: accuracy not measured
    assert results.alarm is None and m["eval/reward_hacking_alarm"] == 0.0
    assert results.notes == ["no eval row carries a chosen/rejected pair: reward-model accuracy not measured"]


def test_reward_up_and_judge_down_raises_the_alarm():
    reward = RewardScores(raw={"base": [0.0] * 3, "tuned": [2.0] * 3},
                          normalized={"base": [0.0] * 3, "tuned": [1.0] * 3},
                          preference={"eval/reward_model/accuracy": 1.0})
    results = compute_results(ROWS, gens(), reward=reward, verdicts=verdicts([0.8] * 3, [0.2] * 3))
    assert results.alarm and "REWARD HACKING" in results.alarm and results.metrics["eval/reward_hacking_alarm"] == 1.0
    assert results.notes == [] and results.samples == []


def test_without_reward_model_or_judge_the_scores_are_none_and_noted():
    results = compute_results(ROWS, gens())
    assert results.alarm is None and "eval/reward_hacking_alarm" not in results.metrics
    assert results.notes == ["no reward model given: reward-model scores and the reward-hacking alarm are skipped",
                             "the judge was turned off (--no-judge): no judge win rate"]
    row = results.per_prompt[0]
    assert row["base"]["reward"] is None and row["base"]["judge"] is None and row["base"]["judge_notes"] == []
    assert "kl_seq" not in row and not any(k.startswith(("eval/judge", "eval/reward")) for k in results.metrics)


def test_extractiveness_per_group_and_references_and_the_copying_alarm():
    post = "I bought a red bike in May and it broke in June so I want a refund from the shop"
    rows = [EvalExample(messages=[{"role": "user", "content": post}], source="eval.jsonl:1",
                        reference="The poster asks a shop to refund a bike that broke after a month.")] * 2
    copy = "I bought a red bike in May and it broke in June"
    summary = "The poster wants a refund for a bike that broke within a month."
    texts = {"base": [summary, summary], "tuned": [copy, summary]}
    gens_ = {name: [Generation(prompt_ids=[1], response_ids=[1, 2], text=t, finished=f)
                    for t, f in zip(ts, (False, True))] for name, ts in texts.items()}
    results = compute_results(rows, gens_)
    m = results.metrics
    assert m["eval/extractive/copied_5gram_share_tuned"] == pytest.approx(0.5)  # the copy 1.0, the summary 0.0
    assert m["eval/extractive/copied_5gram_share_base"] == 0.0
    assert m["eval/extractive/copied_5gram_share_reference"] == 0.0
    assert m["eval/extractive/first_person_share_tuned"] == 0.5 and m["eval/extractive/first_person_share_base"] == 0.0
    assert m["eval/extractive/cut_share_tuned"] == 0.5 and "eval/extractive/cut_share_reference" not in m
    assert m["eval/extractive/coverage_tuned"] > m["eval/extractive/coverage_base"]
    assert results.per_prompt[0]["tuned"]["extractive"]["copied_5grams"] == 1.0
    assert results.per_prompt[0]["tuned"]["extractive"]["first_person"] is True
    # No reward model or judge needed: the copying alarm reads only the texts.
    assert results.alarm and "COPYING THE POST" in results.alarm and m["eval/copying_alarm"] == 1.0
    same = compute_results(rows, {"base": gens_["base"], "tuned": gens_["base"]})
    assert same.alarm is None and same.metrics["eval/copying_alarm"] == 0.0
