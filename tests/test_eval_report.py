"""The HTML report parsed as HTML: metrics and samples present, untrusted text escaped, no scripts or
external resources; the Markdown summary; the training history reader."""

import json
from html.parser import HTMLParser

import pytest

from rlhf.errors import UserError
from rlhf.evaluate import report as R
from rlhf.evaluate.results import Results, Sample
from rlhf.evaluate.history import read_history

EVIL = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


class Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.style = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((k, v or "") for k, v in attrs)
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "style":
            self.style += data
        else:
            self.text.append(data)


def parse(doc: str) -> Collect:
    p = Collect()
    p.feed(doc)
    p.close()
    return p


def make_data(alarm=None, history=None) -> Results:
    metrics = {"eval/num_prompts": 3.0, "eval/judge_win_rate": 0.8333, "eval/judge_base_mean": 0.41,
               "eval/judge_tuned_mean": 0.57, "eval/judge_delta": 0.16, "eval/reward_base_mean": -0.25,
               "eval/reward_tuned_mean": 1.125, "eval/reward_delta": 1.375, "eval/reward_win_rate": 1.0,
               "eval/kl": 0.0421, "eval/kl_seq": 1.37, "eval/kl_full": 0.05, "eval/kl_full_seq": 1.6,
               "eval/rouge_l_base": 0.2, "eval/rouge_l_tuned": 0.3, "eval/length_words_base_mean": 30.0,
               "eval/length_words_tuned_mean": 22.0, "eval/reward_model/accuracy": float("nan")}
    samples = [Sample(prompt=f"post {i}: {EVIL}", base=f"base answer {i} {EVIL}",
                      tuned=f"tuned answer {i} a<b", reference="ref & more",
                      judge_base=0.25, judge_tuned=0.75, reward_base=-1.0, reward_tuned=2.0)
               for i in range(2)]
    return Results(metrics=metrics, info={"model": "adapter <dir>", "base": "smollm2"},
                   alarm=alarm, reward_scores={"base": [-1.0, 0.0, 0.25], "tuned": [1.0, 1.5, 0.875]},
                   judge_scores={"base": [0.2, 0.4, 0.6], "tuned": [0.5, 0.6, 0.6]},
                   history=history or [], samples=samples)


def test_report_is_self_contained_html_with_metrics_and_escaped_samples():
    doc = R.render_html(make_data())
    p = parse(doc)
    text = "".join(p.text)
    # untrusted text comes back verbatim as *text*, never as markup
    assert "script" not in p.tags and "img" not in p.tags
    assert not any(k.startswith("on") for k, _ in p.attrs)
    assert text.count(EVIL) == 4  # two prompts, two base answers
    assert "tuned answer 1 a<b" in text and "ref & more" in text
    assert "adapter <dir>" in text
    # no external resources: nothing to fetch in a sandboxed artifact viewer
    assert not any(k in ("src", "href") for k, _ in p.attrs)
    assert "@import" not in p.style and "url(" not in p.style
    # the metric table, formatted
    assert "83.3%" in text and "0.0421" in text and "1.125" in text and "+1.375" in text
    assert "eval/judge_win_rate" in text
    assert p.attrs.count(("class", "card")) == 4  # headline: judge win rate, judge/reward change, KL
    # charts are inline SVG
    assert p.tags.count("svg") == 2  # reward and judge histograms; no history given
    assert "Samples (2 prompts" in text


def test_alarm_banner_and_training_curves():
    history = [{"step": s, "reward/mean": 0.1 * s, "policy/kl": 0.01 * s, "loss/value": 1.0} for s in range(1, 6)]
    doc = R.render_html(make_data(alarm="POSSIBLE REWARD HACKING: <b>bad</b>", history=history))
    p = parse(doc)
    text = "".join(p.text)
    assert "POSSIBLE REWARD HACKING: <b>bad</b>" in text
    assert p.tags.count("b") == parse(R.render_html(make_data(history=history))).tags.count("b")
    assert ("class", "alarm") in p.attrs
    assert p.tags.count("svg") == 4 and p.tags.count("polyline") == 2
    assert "Reward over PPO training" in text and "KL from the reference over PPO training" in text


def test_markdown_summary_is_short_and_has_the_headline_numbers():
    md = R.render_markdown(make_data(alarm="POSSIBLE REWARD HACKING: x"))
    assert md.startswith("## Evaluation: tuned vs base on 3 eval prompts")
    assert "**WARNING: POSSIBLE REWARD HACKING: x**" in md
    assert "83.3%" in md and "0.0421 per token" in md and "-0.250 → 1.125 (+1.375)" in md
    assert "Reward model accuracy" not in md  # NaN: not measured
    assert len(md.splitlines()) < 15
    assert "WARNING" not in R.render_markdown(make_data())


def test_kfp_metrics_drop_non_finite_values():
    m = R.kfp_metrics({"eval/kl": 0.1, "eval/reward_model/accuracy": float("nan"), "eval/x": float("inf")})
    assert m == {"eval/kl": 0.1}


def test_read_history_from_file_or_directory(tmp_path):
    run = tmp_path / "ppo" / "run"
    run.mkdir(parents=True)
    rows = [{"step": 2, "reward/mean": 0.5}, {"step": 1, "reward/mean": 0.1}, {"note": "no step"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["step"] for r in read_history(str(run / "metrics.jsonl"))] == [1, 2]
    assert len(read_history(str(tmp_path / "ppo"))) == 2  # found one level down
    with pytest.raises(UserError, match="no metrics.jsonl and no TensorBoard"):
        read_history(str(tmp_path / "nowhere"))
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2"):
        read_history(str(run / "metrics.jsonl"))


def test_read_history_from_tensorboard_events(tmp_path):
    """A TensorBoard log directory (what the trainers' Tracker writes) serves when no metrics.jsonl is there."""
    from rlhf.tracking import Tracker

    tracker = Tracker(total_steps=3, tensorboard_dir=str(tmp_path / "tb" / "run"))
    for step in (1, 2, 3):
        tracker.log(step, {"reward/mean": 0.25 * step, "policy/kl": 0.5 / step})
    tracker.close()
    rows = read_history(str(tmp_path / "tb"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["reward/mean"] for r in rows] == pytest.approx([0.25, 0.5, 0.75])
    assert rows[1]["policy/kl"] == pytest.approx(0.25)


def test_line_chart_scales_points_inside_the_plot():
    svg = R.svg_line_chart({"reward/mean": [(0, -1.0), (10, 3.0)]}, "t", "step", "reward")
    p = parse(svg)
    assert p.tags[0] == "svg"
    pts = dict(p.attrs)["points"].split()
    xs = [float(x.split(",")[0]) for x in pts]
    ys = [float(x.split(",")[1]) for x in pts]
    assert xs[0] < xs[1] and ys[0] > ys[1]  # later and higher: right and up (SVG y grows down)
    assert all(0 <= x <= 560 for x in xs) and all(0 <= y <= 260 for y in ys)


def test_extractiveness_table_and_summary_lines_show_every_model_and_the_references():
    data = make_data()
    data.metrics.update({f"eval/extractive/{stat}_{g}": v for g, v in
                         (("base", 0.09), ("tuned", 0.68), ("reference", 0.05))
                         for stat in ("copied_5gram_share", "coverage", "first_person_share")})
    data.metrics.update({"eval/extractive/density_tuned": 12.5, "eval/extractive/cut_share_tuned": 0.5})
    text = "".join(parse(R.render_html(data)).text)
    assert "Extractiveness" in text and "References" in text
    assert "0.680" in text and "0.050" in text and "68.0%" in text and "12.50" in text
    assert "eval/extractive/copied_5gram_share_*" in text
    md = R.render_markdown(data)
    assert "- Copied 5-grams" in md and "base 0.090, tuned 0.680, references 0.050" in md
    assert "Opens in the first person (I/We/My/Our): base 9.0%, tuned 68.0%, references 5.0%" in md
    assert "tuned 0.680 / 12.50" in md and "Cut at the token limit: tuned 50.0%" in md
    # Nothing measured: no table, no lines.
    assert "Extractiveness" not in "".join(parse(R.render_html(make_data())).text)
    assert "Copied 5-grams" not in R.render_markdown(make_data())
