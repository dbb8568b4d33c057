"""The evaluation report: one self-contained HTML file (inline CSS and SVG, no scripts and nothing
fetched, so it renders in the Vertex AI and Kubeflow artifact viewers), a short Markdown summary, and
the flat metric dictionary logged to KFP `Metrics`. Rendering only: every number comes computed in a
`rlhf.evaluate.results.Results`.

Every piece of model or user text goes through `html.escape`: prompts and responses are untrusted.
"""

from __future__ import annotations

import html
import math
from typing import Optional, Sequence

from rlhf.evaluate import extractive as X
from rlhf.evaluate import metrics as M
from rlhf.evaluate.results import Results, Sample

# (label, metric with {} for the group: base, sft, tuned; format, what it means)
PAIRED_ROWS = [
    ("Judge score (mean, 0-1)", "eval/judge_{}_mean", ".3f",
     "independent constitution judge (rlhf.judge), not the reward the policy was tuned on"),
    ("Reward-model score (mean)", "eval/reward_{}_mean", ".3f", "raw score of the trained reward model"),
    ("Reward-model score (std)", "eval/reward_{}_std", ".3f", ""),
    ("Reward-model score, normalized (mean)", "eval/reward_{}_normalized_mean", ".3f",
     "with the reward model's saved training statistics"),
    ("ROUGE-L F vs reference (mean)", "eval/rouge_l_{}", ".3f", "only prompts with a reference"),
    ("Response length, tokens (mean)", "eval/length_tokens_{}_mean", ".1f", "EOS included"),
    ("Response length, words (mean)", "eval/length_words_{}_mean", ".1f", ""),
    ("Responses that ended with EOS", "eval/eos_{}_fraction", ".1%", "the rest hit the token limit"),
]
GROUP_TITLES = {"base": "Base", "sft": "SFT", "tuned": "Tuned"}

# (label, metric, format, what it means)
SINGLE_ROWS = [
    ("Judge win rate, tuned over base", "eval/judge_win_rate", ".1%",
     "share of prompts where the judge scores the tuned response higher; a tie counts half"),
    ("Reward-model win rate, tuned over base", "eval/reward_win_rate", ".1%",
     "same, by the reward model; a tie counts half"),
    # With an SFT model (rlhf.evaluate.lineage): the policy against its starting point, and SFT's own gain.
    ("Judge win rate, tuned over SFT", "eval/judge_win_rate_vs_sft", ".1%",
     "share of prompts where the judge scores the tuned response above the SFT model's; a tie counts half"),
    ("Judge win rate, SFT over base", "eval/judge_sft_win_rate_vs_base", ".1%",
     "share of prompts where the judge scores the SFT model's response above the base's"),
    ("Reward-model win rate, tuned over SFT", "eval/reward_win_rate_vs_sft", ".1%", "same, by the reward model"),
    ("Reward-model win rate, SFT over base", "eval/reward_sft_win_rate_vs_base", ".1%", ""),
    ("KL(tuned || base) per token", "eval/kl", ".4f",
     "mean log-ratio log π_tuned − log π_base over the tuned responses' tokens (k1)"),
    ("KL(tuned || base) per response", "eval/kl_seq", ".4f", "k1 summed over each response, averaged"),
    ("Exact next-token KL per token", "eval/kl_full", ".4f",
     "KL of the two next-token distributions along the tuned responses (always >= 0)"),
    ("Exact next-token KL per response", "eval/kl_full_seq", ".4f", "summed over each response, averaged"),
    ("Reward model accuracy on eval pairs", "eval/reward_model/accuracy", ".1%",
     "chosen scored above rejected (rlhf.reward.metrics)"),
    ("Reward model precision", "eval/reward_model/precision", ".3f",
     "each response a binary example: chosen = positive, predicted positive above the mean reward"),
    ("Reward model recall", "eval/reward_model/recall", ".3f", ""),
    ("Reward model F1", "eval/reward_model/f1", ".3f", ""),
    ("Reward model ROC AUC", "eval/reward_model/roc_auc", ".3f", "P(chosen outscores rejected), ties half"),
    ("Eval pairs scored", "eval/reward_model/pairs", ".0f", ""),
    ("Eval prompts", "eval/num_prompts", ".0f", ""),
]

# Training curves: (title, metric names to draw from the history, y label)
CURVES = [
    # reward/total: the score minus the KL penalty, what PPO maximizes
    ("Reward over PPO training", ["reward/mean", "reward/total"], "reward"),
    # PPO's policy/kl is summed over each response (compare eval/kl_seq, not the per-token eval/kl)
    ("KL from the reference over PPO training", ["policy/kl"], "KL per response"),
]

COLORS = {"base": "#8c8c8c", "sft": "#e8710a", "tuned": "#1a73e8"}
SERIES_COLORS = ["#1a73e8", "#e8710a", "#188038", "#9334e6"]


# ------------------------------------------------------------------------------------------------
# Training history (read by rlhf.evaluate.history)


def _series(history: Sequence[dict], name: str) -> list[tuple[float, float]]:
    out = []
    for row in history:
        value = row.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append((float(row["step"]), float(value)))
    return out


# ------------------------------------------------------------------------------------------------
# Inline SVG charts


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:.4g}"


def _frame(width, height, title, ticks_x, ticks_y, sx, sy, xlabel, ylabel, left, top, plot_w, plot_h):
    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="ct">{e(title)}</text>']
    for t in ticks_y:
        y = sy(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{e(_fmt_tick(t))}</text>')
    for t in ticks_x:
        x = sx(t)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="tick">'
                     f'{e(_fmt_tick(t))}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="axis"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="lbl">{e(xlabel)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" class="lbl" '
                 f'transform="rotate(-90 12 {top + plot_h / 2})">{e(ylabel)}</text>')
    return parts


def svg_line_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
                   width: int = 560, height: int = 260) -> str:
    """A line chart of one or more (x, y) series, as an inline <svg> element."""
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    left, top, right, bottom = 56, 26, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ticks_x, ticks_y = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = ticks_x[0], ticks_x[-1], ticks_y[0], ticks_y[-1]

    def sx(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y):
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = _frame(width, height, title, ticks_x, ticks_y, sx, sy, xlabel, ylabel, left, top, plot_w, plot_h)
    for k, (name, pts) in enumerate(series.items()):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        if len(pts) == 1:
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{left + 8}" y="{top + 14 + 14 * k}" class="lbl" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(groups: dict[str, list[float]], title: str, xlabel: str, bins: int = 20,
                  width: int = 560, height: int = 260) -> str:
    """Overlaid histograms (same bins) of several groups of values, as an inline <svg> element."""
    values = [v for g in groups.values() for v in g if math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    hists = {name: M.histogram([v for v in g if math.isfinite(v)], bins, lo, hi) for name, g in groups.items()}
    edges = next(iter(hists.values())).edges
    top_count = max(max(h.counts) for h in hists.values())
    left, top, right, bottom = 56, 26, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks_x, ticks_y = _nice_ticks(edges[0], edges[-1]), _nice_ticks(0, top_count)
    x0, x1, y1 = ticks_x[0], ticks_x[-1], ticks_y[-1]

    def sx(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y):
        return top + plot_h - y / y1 * plot_h

    parts = _frame(width, height, title, ticks_x, ticks_y, sx, sy, xlabel, "prompts", left, top, plot_w, plot_h)
    for k, (name, h) in enumerate(hists.items()):
        color = COLORS.get(name, SERIES_COLORS[k % len(SERIES_COLORS)])
        for i, c in enumerate(h.counts):
            if c:
                xa, xb = sx(h.edges[i]), sx(h.edges[i + 1])
                parts.append(f'<rect x="{xa:.1f}" y="{sy(c):.1f}" width="{max(xb - xa - 1, 1):.1f}" '
                             f'height="{sy(0) - sy(c):.1f}" fill="{color}" fill-opacity="0.55"/>')
        parts.append(f'<text x="{left + 8}" y="{top + 14 + 14 * k}" class="lbl" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#202124;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #dadce0;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #dadce0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.note{color:#5f6368;font-size:12px}.up{color:#188038}.down{color:#d93025}
.alarm{background:#fce8e6;border:3px solid #d93025;color:#a50e0e;padding:12px 16px;font-weight:bold;font-size:16px;margin:12px 0}
.info td{border:none;padding:2px 8px}.charts{display:flex;flex-wrap:wrap;gap:16px}
svg .ct{font-size:13px;font-weight:bold}svg .tick{font-size:10px;fill:#5f6368}svg .lbl{font-size:11px}
svg .grid{stroke:#e8eaed}svg .axis{fill:none;stroke:#9aa0a6}
.sample{border:1px solid #dadce0;border-radius:6px;margin:14px 0;padding:8px 12px}
.sample pre{white-space:pre-wrap;word-wrap:break-word;font-family:inherit;margin:4px 0}
.side{display:grid;grid-template-columns:1fr 1fr;gap:12px}.side>div{background:#f8f9fa;padding:6px 10px;border-radius:4px}
.cards{display:flex;gap:12px;margin:12px 0}.card{border:1px solid #dadce0;border-radius:6px;padding:8px 16px;min-width:140px}
.big{font-size:26px;font-weight:bold}.win{outline:2px solid #188038}.scores{color:#5f6368;font-size:12px}.prompt{max-height:240px;overflow:auto}
"""


def _fmt(value: Optional[float], spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _delta_cell(base: Optional[float], tuned: Optional[float], spec: str) -> str:
    if base is None or tuned is None or math.isnan(base) or math.isnan(tuned):
        return '<td class="num">–</td>'
    d = tuned - base
    cls = "up" if d > 0 else ("down" if d < 0 else "")
    return f'<td class="num {cls}">{format(d, "+" + spec)}</td>'


def _group_cells(values: dict[str, Optional[float]], spec: str) -> str:
    """One cell per group, then the change of tuned over base (and over SFT when there is one)."""
    cells = "".join(f"<td class='num'>{_fmt(v, spec)}</td>" for v in values.values())
    cells += _delta_cell(values["base"], values["tuned"], spec)
    if "sft" in values:
        cells += _delta_cell(values["sft"], values["tuned"], spec)
    return cells


def _kl_label(text: str, groups: Sequence[str]) -> str:
    """KL is measured against the tuned policy's reference: the SFT model when there is one."""
    return text.replace("|| base", "|| SFT").replace("π_base", "π_SFT") if "sft" in groups else text


def _metric_tables(m: dict[str, float], groups: Sequence[str] = ("base", "tuned")) -> str:
    e = html.escape
    rows = []
    for label, key, spec, note in PAIRED_ROWS:
        if any(key.format(g) in m for g in groups):
            values = {g: m.get(key.format(g)) for g in groups}
            rows.append(f"<tr><td>{e(label)}</td>{_group_cells(values, spec)}<td class='note'>{e(note)}</td></tr>")
    for name in classifier_names(m):
        for what, suffix, spec in (("mean probability", "mean", ".3f"), ("share above 0.5", "above_half", ".1%")):
            values = {g: m.get(f"eval/classifier/{name}/{g}_{suffix}") for g in groups}
            rows.append(f"<tr><td>Classifier {e(name)}: {what}</td>{_group_cells(values, spec)}"
                        f"<td class='note'>P(class) by an evaluation classifier (eval_classifiers)</td></tr>")
    heads = "".join(f"<th>{GROUP_TITLES[g]}</th>" for g in groups) + "<th>Change</th>"
    heads += "<th>Change vs SFT</th>" if "sft" in groups else ""
    paired = (f"<table><tr><th>Metric</th>{heads}<th>Note</th></tr>"
              + "".join(rows) + "</table>") if rows else ""
    rows = []
    for label, key, spec, note in SINGLE_ROWS:
        if key in m:
            if key.startswith("eval/kl"):
                label, note = _kl_label(label, groups), _kl_label(note, groups)
            rows.append(f"<tr><td>{e(label)}</td><td class='num'>{_fmt(m[key], spec)}</td>"
                        f"<td class='note'>{e(note)}</td><td><code>{e(key)}</code></td></tr>")
    single = ("<table><tr><th>Metric</th><th>Value</th><th>Note</th><th>Name</th></tr>"
              + "".join(rows) + "</table>") if rows else ""
    return paired + single


def classifier_names(m: dict[str, float]) -> list[str]:
    """The eval classifiers' names, from their metrics (`eval/classifier/NAME/base_mean`)."""
    return sorted(k[len("eval/classifier/"):-len("/base_mean")] for k in m
                  if k.startswith("eval/classifier/") and k.endswith("/base_mean"))


def _extractive_table(m: dict[str, float], groups: Sequence[str]) -> str:
    """How much each model copies the post, beside the hand-written references when measured."""
    columns = list(groups) + (["reference"] if any(k.endswith("_reference") and k.startswith("eval/extractive/")
                                                   for k in m) else [])
    titles = {**GROUP_TITLES, "reference": "References"}
    e = html.escape
    rows = []
    for stat, label, spec, note in X.STATS:
        keys = [f"eval/extractive/{stat}_{c}" for c in columns]
        if any(k in m for k in keys):
            rows.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td class='num'>{_fmt(m.get(k), spec)}</td>"
                                                          for k in keys)
                        + f"<td class='note'>{e(note)}</td><td><code>{e(f'eval/extractive/{stat}_*')}</code></td></tr>")
    if not rows:
        return ""
    heads = "".join(f"<th>{titles[c]}</th>" for c in columns)
    return ("<h2>Extractiveness (how much the responses copy the post)</h2>"
            "<p class='scores'>A copy of the post shares its words with any summary of it, so it can win the "
            "judge and ROUGE-L; compare the tuned model with the references here.</p>"
            f"<table><tr><th>Metric</th>{heads}<th>Note</th><th>Name</th></tr>" + "".join(rows) + "</table>")


def _judge_rules_table(rules: dict[str, dict[str, float]]) -> str:
    """Mean score of each constitution rule, per model: what the judge rewards and penalizes."""
    if not rules.get("base") or not rules.get("tuned"):
        return ""
    e = html.escape
    groups = [g for g in GROUP_TITLES if g in rules]
    rows = "".join(f"<tr><td>{e(rule)}</td>"
                   + _group_cells({g: rules[g].get(rule, float("nan")) for g in groups}, ".3f") + "</tr>"
                   for rule in rules["base"])
    heads = "".join(f"<th>{GROUP_TITLES[g]}</th>" for g in groups) + "<th>Change</th>"
    heads += "<th>Change vs SFT</th>" if "sft" in groups else ""
    return ("<h2>Judge rules (mean score per principle)</h2><table><tr><th>Rule</th>" + heads + "</tr>"
            + rows + "</table>")


def _notes_html(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return ("<details><summary class='scores'>judge notes</summary><ul class='scores'>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></details>")


def _score_line(judge: Optional[float], reward: Optional[float]) -> str:
    bits = []
    if judge is not None:
        bits.append(f"judge {judge:.3f}")
    if reward is not None:
        bits.append(f"reward {reward:.3f}")
    return " · ".join(bits)


def _sides(s: Sample) -> list[tuple[str, str, Optional[float], Optional[float], list[str]]]:
    """(group, response, judge, reward, judge notes) of each model shown: base, SFT if any, tuned."""
    sides = [("base", s.base, s.judge_base, s.reward_base, s.judge_notes_base)]
    if s.sft is not None:
        sides.append(("sft", s.sft, s.judge_sft, s.reward_sft, s.judge_notes_sft))
    return sides + [("tuned", s.tuned, s.judge_tuned, s.reward_tuned, s.judge_notes_tuned)]


def _winner(s: Sample) -> Optional[str]:
    """Which side the judge (else the reward model) prefers, for highlighting; None on a tie at the top."""
    for k in (2, 3):  # judge, then reward
        scored = [(side[k], side[0]) for side in _sides(s)]
        if all(score is not None for score, _ in scored):
            best = max(score for score, _ in scored)
            top = [group for score, group in scored if score == best]
            return top[0] if len(top) == 1 else None
    return None


def _samples_html(samples: Sequence[Sample]) -> str:
    e = html.escape
    out = []
    for i, s in enumerate(samples, 1):
        win = _winner(s)
        ref = (f"<details><summary>Reference</summary><pre>{e(s.reference)}</pre></details>"
               if s.reference else "")
        sides = _sides(s)
        # Three columns inline: the stylesheet (and so a two-model report) stays as it was.
        grid = ' style="grid-template-columns:1fr 1fr 1fr"' if len(sides) == 3 else ""
        out.append(
            f'<div class="sample"><b>Prompt {i}</b><div class="prompt"><pre>{e(s.prompt)}</pre></div>{ref}'
            f'<div class="side"{grid}>'
            + "".join(f'<div class="{"win" if win == group else ""}"><b>{GROUP_TITLES[group]}</b> '
                      f'<span class="scores">{e(_score_line(judge, reward))}</span><pre>{e(text)}</pre>'
                      f'{_notes_html(notes)}</div>' for group, text, judge, reward, notes in sides)
            + "</div></div>")
    return "".join(out)


# The numbers a reader wants first: (label, metric, format, show the sign)
HEADLINE = [
    ("Judge win rate", "eval/judge_win_rate", ".1%", False),
    ("Judge win rate over SFT", "eval/judge_win_rate_vs_sft", ".1%", False),
    ("Judge score change", "eval/judge_delta", "+.3f", True),
    ("Reward-model score change", "eval/reward_delta", "+.3f", True),
    ("KL per token", "eval/kl", ".4f", False),
]


def _headline(m: dict[str, float]) -> str:
    cards = []
    for label, key, spec, signed in HEADLINE:
        v = m.get(key)
        if v is None or math.isnan(v):
            continue
        cls = ("up" if v > 0 else "down" if v < 0 else "") if signed else ""
        cards.append(f'<div class="card"><div class="big {cls}">{format(v, spec)}</div>'
                     f'<div class="scores">{html.escape(label)}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def render_html(data: Results) -> str:
    """The whole report as one HTML document."""
    e = html.escape
    sft = "sft" in data.groups
    title = "RLHF evaluation: tuned vs SFT vs base" if sft else "RLHF evaluation: tuned vs base"
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{title}</title>", f"<style>{CSS}</style></head><body>", f"<h1>{title}</h1>"]
    if data.alarm:
        parts.append(f'<div class="alarm" role="alert">&#9888; {e(data.alarm)}</div>')
    parts.append(_headline(data.metrics))
    if data.info:
        parts.append("<table class='info'>" + "".join(
            f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in data.info.items()) + "</table>")
    parts.append("<h2>Metrics</h2>" + _metric_tables(data.metrics, data.groups))
    parts.append(_extractive_table(data.metrics, data.groups))
    parts.append(_judge_rules_table(data.judge_rules))
    if data.notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in data.notes) + "</ul>")

    charts = []
    if data.reward_scores:
        charts.append(svg_histogram(data.reward_scores, "Reward-model score of eval responses", "reward"))
    if data.judge_scores:
        charts.append(svg_histogram(data.judge_scores, "Judge score of eval responses", "judge score"))
    if any(charts):
        parts.append("<h2>Score distributions</h2><div class='charts'>" + "".join(charts) + "</div>")

    if data.history:
        curves = []
        for title, names, ylabel in CURVES:
            series = {n: _series(data.history, n) for n in names}
            series = {n: s for n, s in series.items() if s}
            if series:
                curves.append(svg_line_chart(series, title, "training step", ylabel))
            else:
                curves.append(f"<p>{e(title)}: {e(', '.join(names))} not in the training history.</p>")
        parts.append("<h2>Training curves</h2><div class='charts'>" + "".join(curves) + "</div>")

    if data.samples:
        shown = "base, SFT and tuned" if sft else "base and tuned"
        parts.append(f"<h2>Samples ({len(data.samples)} prompts, {shown} side by side)</h2>"
                     "<p class='scores'>The response the judge prefers is outlined.</p>")
        parts.append(_samples_html(data.samples))
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# Markdown summary and KFP metrics


def _md(m: dict[str, float], key: str, spec: str) -> Optional[str]:
    v = m.get(key)
    return None if v is None or math.isnan(v) else format(v, spec)


def _sft_lines(m: dict[str, float]) -> list[str]:
    """The win rate over the SFT model on its own line, then the SFT model's row against the base."""
    lines = []
    if _md(m, "eval/judge_win_rate_vs_sft", ".1%"):
        lines.append(f"- Judge win rate over the SFT model (tuned over SFT, ties count half): "
                     f"**{_md(m, 'eval/judge_win_rate_vs_sft', '.1%')}**")
    if _md(m, "eval/reward_win_rate_vs_sft", ".1%"):
        lines.append(f"- Reward-model win rate over the SFT model: {_md(m, 'eval/reward_win_rate_vs_sft', '.1%')}")
    bits = []
    for label, key, win, spec in (("judge", "eval/judge_sft_mean", "eval/judge_sft_win_rate_vs_base", ".3f"),
                                  ("reward-model score", "eval/reward_sft_mean",
                                   "eval/reward_sft_win_rate_vs_base", ".3f"),
                                  ("ROUGE-L", "eval/rouge_l_sft", None, ".3f"),
                                  ("words", "eval/length_words_sft_mean", None, ".1f")):
        if _md(m, key, spec):
            bits.append(f"{label} {_md(m, key, spec)}"
                        + (f" (win rate over base {_md(m, win, '.1%')})" if win and _md(m, win, ".1%") else ""))
    for name in classifier_names(m):
        if _md(m, f"eval/classifier/{name}/sft_mean", ".3f"):
            bits.append(f"classifier {name} {_md(m, f'eval/classifier/{name}/sft_mean', '.3f')}")
    if bits:
        lines.append("- SFT model (the tuned policy's starting point): " + ", ".join(bits))
    return lines


def _extractive_lines(m: dict[str, float], groups: Sequence[str]) -> list[str]:
    """Copying, first-person openings and cut responses per model (and references), one line each."""
    titles = {"base": "base", "sft": "SFT", "tuned": "tuned", "reference": "references"}
    lines = []
    for stat, label, spec in (("copied_5gram_share", "Copied 5-grams (share of each response's 5-grams "
                                                     "found verbatim in the post)", ".3f"),
                              ("novel_bigram_share", "Novel bigrams", ".3f"),
                              ("coverage", "Extractive fragment coverage / density", ".3f"),
                              ("first_person_share", "Opens in the first person (I/We/My/Our)", ".1%"),
                              ("cut_share", "Cut at the token limit", ".1%")):
        bits = []
        for g in list(groups) + ["reference"]:
            value = _md(m, f"eval/extractive/{stat}_{g}", spec)
            if value is not None:
                if stat == "coverage":
                    value += f" / {_md(m, f'eval/extractive/density_{g}', '.2f')}"
                bits.append(f"{titles[g]} {value}")
        if bits:
            lines.append(f"- {label}: " + ", ".join(bits))
    return lines


def render_markdown(data: Results) -> str:
    """A short summary: judge win rate, KL, reward change, and the alarm if raised."""
    m = data.metrics
    n = int(m.get("eval/num_prompts", 0))
    sft = "sft" in data.groups
    lines = [f"## Evaluation: tuned vs {'SFT vs ' if sft else ''}base on {n} eval prompts", ""]
    if data.alarm:
        lines += [f"> **WARNING: {data.alarm}**", ""]
    if _md(m, "eval/judge_win_rate", ".1%"):
        lines.append(f"- Judge win rate (tuned over base, ties count half): **{_md(m, 'eval/judge_win_rate', '.1%')}**")
    if sft:
        lines += _sft_lines(m)
    if _md(m, "eval/judge_tuned_mean", ".3f"):
        lines.append(f"- Judge score: {_md(m, 'eval/judge_base_mean', '.3f')} → "
                     f"{_md(m, 'eval/judge_tuned_mean', '.3f')} ({_md(m, 'eval/judge_delta', '+.3f')})")
    if _md(m, "eval/reward_tuned_mean", ".3f"):
        lines.append(f"- Reward-model score: {_md(m, 'eval/reward_base_mean', '.3f')} → "
                     f"{_md(m, 'eval/reward_tuned_mean', '.3f')} ({_md(m, 'eval/reward_delta', '+.3f')}); "
                     f"reward-model win rate {_md(m, 'eval/reward_win_rate', '.1%')}"
                     + (f" ({data.info['Reward score']})" if "Reward score" in (data.info or {}) else ""))
    if _md(m, "eval/kl", ".4f"):
        lines.append(f"- KL(tuned ‖ {'SFT' if sft else 'base'}): {_md(m, 'eval/kl', '.4f')} per token, "
                     f"{_md(m, 'eval/kl_seq', '.3f')} per response (exact next-token KL "
                     f"{_md(m, 'eval/kl_full', '.4f')} per token)")
    if _md(m, "eval/rouge_l_tuned", ".3f"):
        lines.append(f"- ROUGE-L vs reference: {_md(m, 'eval/rouge_l_base', '.3f')} → {_md(m, 'eval/rouge_l_tuned', '.3f')}")
    if _md(m, "eval/length_words_tuned_mean", ".1f"):
        lines.append(f"- Response length (words): {_md(m, 'eval/length_words_base_mean', '.1f')} → "
                     f"{_md(m, 'eval/length_words_tuned_mean', '.1f')}")
    lines += _extractive_lines(m, data.groups)
    for name in classifier_names(m):
        key = f"eval/classifier/{name}"
        lines.append(f"- Classifier {name}: mean probability {_md(m, key + '/base_mean', '.3f')} → "
                     f"{_md(m, key + '/tuned_mean', '.3f')} ({_md(m, key + '/delta', '+.3f')}); above 0.5: "
                     f"{_md(m, key + '/base_above_half', '.1%')} → {_md(m, key + '/tuned_above_half', '.1%')}")
    if _md(m, "eval/reward_model/accuracy", ".1%"):
        lines.append(f"- Reward model accuracy on eval pairs: {_md(m, 'eval/reward_model/accuracy', '.1%')}")
    for note in data.notes:
        lines.append(f"- Note: {note}")
    return "\n".join(lines) + "\n"


def kfp_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The finite metrics, names unchanged (KFP shows `eval/judge_win_rate` as is)."""
    return {k: float(v) for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and math.isfinite(v)}
