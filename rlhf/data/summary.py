"""A short human summary of a validation run's `stats.json`, as Markdown (KFP's Markdown artifact,
the CLI's output) and as HTML (KFP's HTML artifact)."""

from __future__ import annotations

import html as _html
from typing import Any

_LENGTH_COLUMNS = ("p50", "p90", "p99", "max")


def _rows(stats: dict[str, Any]) -> list[list[str]]:
    """Overview table: one row per dataset."""
    out = [["dataset", "format", "files", "rows", "pairs/examples", "duplicates", "choice 0/1"]]
    for kind, ds in stats["datasets"].items():
        choice = f"{ds['choice']['0']}/{ds['choice']['1']}" if "choice" in ds else "-"
        out.append([kind, str(ds["format"]), str(len(ds["files"])), str(ds["rows"]),
                    str(ds.get("pairs", ds.get("examples"))), str(ds["duplicates"]), choice])
    return out


def _length_rows(stats: dict[str, Any]) -> list[list[str]]:
    """Length table: characters and (with a tokenizer) tokens of prompts and responses."""
    out = [["dataset", "text", "unit", *_LENGTH_COLUMNS, "truncated"]]
    for kind, ds in stats["datasets"].items():
        for unit in ("chars", "tokens"):
            for part, lengths in ds.get(unit, {}).items():
                truncated = str(ds["truncated"].get(part, "-")) if unit == "tokens" else "-"
                out.append([kind, part, unit, *(str(lengths[c]) for c in _LENGTH_COLUMNS), truncated])
    return out


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _facts(stats: dict[str, Any]) -> list[str]:
    facts = []
    if stats.get("instruction"):
        facts.append(f"Instruction: {stats['instruction']!r}")
    if stats.get("tokenizer"):
        facts.append(f"Tokenizer: {stats['tokenizer']} (truncation at {stats['prompt_sequence_length']} "
                     f"prompt / {stats['target_sequence_length']} response tokens)")
    if "eval_prompts_in_training" in stats:
        facts.append(f"Eval prompts also in the training data: {stats['eval_prompts_in_training']}")
    for kind, ds in stats["datasets"].items():
        if "labels" in ds:
            balance = ", ".join(f"{c}: {b['rows']} ({b['fraction']:.1%})" for c, b in ds["labels"].items())
            facts.append(f"Label balance of the {kind} data: {balance}")
    facts.append(f"Warnings: {stats['warnings']['count']}")
    return facts + list(stats.get("notes", []))


def markdown(stats: dict[str, Any]) -> str:
    parts = ["# Dataset validation", "", "All datasets are valid.", "", _md_table(_rows(stats)), "",
             "## Lengths", "", _md_table(_length_rows(stats)), ""]
    parts += [f"- {fact}" for fact in _facts(stats)]
    if stats["warnings"]["shown"]:
        parts += ["", "## Warnings", "", "```", *stats["warnings"]["shown"], "```"]
    return "\n".join(parts) + "\n"


def _html_table(rows: list[list[str]]) -> str:
    esc = _html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html(stats: dict[str, Any]) -> str:
    esc = _html.escape
    facts = "".join(f"<li>{esc(f)}</li>" for f in _facts(stats))
    warnings = ""
    if stats["warnings"]["shown"]:
        warnings = "<h2>Warnings</h2><pre>" + esc("\n".join(stats["warnings"]["shown"])) + "</pre>"
    style = ("body{font-family:sans-serif}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Dataset validation</title>"
            f"<style>{style}</style></head><body><h1>Dataset validation</h1><p>All datasets are valid.</p>"
            f"{_html_table(_rows(stats))}<h2>Lengths</h2>{_html_table(_length_rows(stats))}"
            f"<ul>{facts}</ul>{warnings}</body></html>\n")
