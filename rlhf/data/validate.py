"""Validate the user's datasets line by line before any accelerator is paid for, and write them in
the canonical format that every later step reads.

`run_validation(config)` checks the preference, prompt and eval datasets (local paths, `gs://`
URIs or globs of either) and returns a `ValidationReport`: every problem as `URI:LINE: message`
(the first `max_errors` kept, the rest counted), warnings, statistics and flat KFP metrics. Only when
every dataset is valid does it write the outputs: `preference.jsonl`, `prompts.jsonl`, `eval.jsonl`
(canonical rows; empty when that dataset was not given), then `summary.md`, `summary.html` and, last,
`stats.json`, whose presence marks a complete set.

Files are streamed as bytes, one line at a time, so a 10 GB file is never held in memory and bytes
that are not UTF-8 are reported by line; canonical rows are written as they are read into atomic
writers that are discarded when a problem turns up. Duplicate and train/eval overlap checks keep an
8-byte hash per row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional

from rlhf import settings, storage
from rlhf.data import summary
from rlhf.data.formats import KINDS, ParsedRow, describe_format, parse_row
from rlhf.data.stats import DatasetStats, flat_metrics
from rlhf.errors import StorageError, StorageUnavailable
from rlhf.settings import Settings, positive, setting

log = logging.getLogger(__name__)

_BOM = b"\xef\xbb\xbf"
_LINE_BITS = 40  # a row's location packs (file index, line) into one 64-bit integer


@dataclass
class ValidateConfig(Settings):
    """What to validate and how; the flags of `rlhf validate` and the dataset settings of the `validate_inputs`
    component. Any non-empty subset of the three datasets may be given."""

    STEP: ClassVar[str] = "validation"

    preference_dataset: str = setting(
        "", "preference data (JSONL, optionally .gz): a local path, gs:// URI or glob; Google text or chat "
            "format, TRL prompt/chosen/rejected, or ranked candidates")
    prompt_dataset: str = setting(
        "", "prompts for reinforcement learning: input_text, prompt or chat messages per line")
    eval_dataset: str = setting(
        "", "held-out prompts, optionally with a preference pair and a `reference` text")
    labeled_dataset: str = setting(
        "", "labeled responses for a classifier reward model: input_text (or chat messages), "
            "output_text and label (an integer class or a class name) per line")
    sft_dataset: str = setting(
        "", "demonstrations for supervised fine-tuning: input_text and output_text, or chat messages "
            "ending with the assistant's answer, per line (Vertex AI's supervised tuning format)")
    output_dir: str = setting(
        "", "where to write the canonical datasets, stats.json and summary.md/html (local or gs://); "
            "nothing is written when empty or when any dataset is invalid")
    instruction: str = settings.instruction()
    tokenizer: str = setting(
        "", "tokenizer for token statistics: a local directory or a model alias such as "
            "smollm2-135m-instruct; empty for character statistics only")
    prompt_sequence_length: int = settings.prompt_sequence_length()
    target_sequence_length: int = settings.target_sequence_length()
    max_errors: int = setting(20, "how many problems (and warnings) to show; the rest are counted", positive)

    def cross_checks(self) -> Iterable[settings.Problem]:
        if not self.datasets():
            yield settings.Problem("preference_dataset", "", "no dataset given: pass any of --preference-dataset, "
                                                    "--prompt-dataset, --eval-dataset, --labeled-dataset, "
                                                    "--sft-dataset")

    def datasets(self) -> dict[str, str]:
        given = {"preference": self.preference_dataset, "prompt": self.prompt_dataset,
                 "eval": self.eval_dataset, "labeled": self.labeled_dataset, "sft": self.sft_dataset}
        return {kind: uri for kind, uri in given.items() if uri}


@dataclass
class ValidationOutputs:
    """Where a valid run writes its outputs."""

    preference: str
    prompts: str
    eval: str
    stats: str
    summary_md: str
    summary_html: str
    labeled: str = ""  # only written when set (and a labeled dataset was given)
    sft: str = ""  # likewise

    @classmethod
    def in_dir(cls, directory: str) -> "ValidationOutputs":
        return cls(**{k: storage.join(directory, name) for k, name in (
            ("preference", "preference.jsonl"), ("prompts", "prompts.jsonl"), ("eval", "eval.jsonl"),
            ("stats", "stats.json"), ("summary_md", "summary.md"), ("summary_html", "summary.html"),
            ("labeled", "labeled.jsonl"), ("sft", "sft.jsonl"))})

    def dataset(self, kind: str) -> str:
        return {"preference": self.preference, "prompt": self.prompts, "eval": self.eval,
                "labeled": self.labeled, "sft": self.sft}[kind]


@dataclass
class Problem:
    uri: str
    line: Optional[int]
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.uri}:{self.line}" if self.line else self.uri
        return f"{where}: {'warning: ' if self.warning else ''}{self.message}"


class Problems:
    """Keeps the first `limit` problems and counts all of them."""

    def __init__(self, limit: int, noun: str):
        self.limit = limit
        self.noun = noun
        self.shown: list[Problem] = []
        self.count = 0

    def add(self, problem: Problem) -> None:
        self.count += 1
        if len(self.shown) < self.limit:
            self.shown.append(problem)

    def lines(self) -> list[str]:
        out = [str(p) for p in self.shown]
        if self.count > len(self.shown):
            out.append(f"... and {self.count - len(self.shown)} more {self.noun}")
        return out


@dataclass
class ValidationReport:
    problems: Problems
    warnings: Problems
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: Optional[ValidationOutputs] = None  # set when the outputs were written

    @property
    def ok(self) -> bool:
        return self.problems.count == 0

    def problem_text(self) -> str:
        head = f"{self.problems.count} problem(s) found in the datasets:"
        return "\n".join([head] + self.problems.lines())


class _Invalid(Exception):
    """Raised inside the output writers to discard them."""


class _Hashes:
    """8-byte row hashes with their packed locations, for duplicate and overlap checks."""

    def __init__(self):
        self.hashes = array("Q")
        self.locations = array("Q")

    def add(self, text: str, location: int) -> None:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        self.hashes.append(int.from_bytes(digest, "little"))
        self.locations.append(location)


class _Run:
    """State shared by the datasets of one run."""

    def __init__(self, config: ValidateConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.problems = Problems(config.max_errors, "problems")
        self.warnings = Problems(config.max_errors, "warnings")
        self.files: list[str] = []  # file index -> URI, for packed locations
        self.prompt_hashes: dict[str, _Hashes] = {}

    def where(self, location: int) -> tuple[str, int]:
        return self.files[location >> _LINE_BITS], location & ((1 << _LINE_BITS) - 1)


class _DatasetCheck:
    """Validates the files of one dataset and streams its canonical rows into `sink`."""

    def __init__(self, run: _Run, kind: str, pattern: str, sink):
        self.run = run
        self.kind = kind
        self.pattern = pattern
        self.sink = sink
        self.stats = DatasetStats(kind, pattern, run.tokenizer)
        self.first_format: Optional[tuple[str, str, int]] = None  # (format, uri, line)
        self.unknown: dict[str, tuple[str, int]] = {}  # unknown key -> first (uri, line)
        self.rows = _Hashes()
        self.prompts = _Hashes()

    def problem(self, uri: str, line: Optional[int], message: str) -> None:
        self.run.problems.add(Problem(uri, line, message))

    def warn(self, uri: str, line: Optional[int], message: str) -> None:
        self.run.warnings.add(Problem(uri, line, message, warning=True))

    def check(self) -> None:
        try:
            files = storage.expand(self.pattern)
        except StorageUnavailable:
            raise  # an outage is not a data problem: the run stops, saying so
        except StorageError as e:
            self.problem(self.pattern, None, _without_prefix(str(e), self.pattern))
            return
        for uri in files:
            self.stats.files.append(uri)
            self.run.files.append(uri)
            self.check_file(uri, len(self.run.files) - 1)
        self.report_unknown_keys()
        self.report_duplicates()
        self.run.prompt_hashes[self.kind] = self.prompts

    def check_file(self, uri: str, file_index: int) -> None:
        log.info("validating %s dataset %s", self.kind, uri)
        lineno = 0
        seen_content = False
        previous_format: Optional[str] = None
        try:
            with storage.open_read(uri, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    if lineno == 1 and raw.startswith(_BOM):
                        raw = raw[len(_BOM):]  # editors on Windows add one; harmless
                    stripped = raw.strip()
                    if not stripped:
                        continue  # blank lines (a trailing newline too) carry nothing
                    if not seen_content:
                        seen_content = True
                        if self.whole_file_json(uri, lineno, stripped):
                            return
                    parsed = self.parse_line(uri, lineno, raw.rstrip(b"\r\n"))
                    if parsed is None:
                        continue
                    previous_format = self.check_format(uri, lineno, parsed, previous_format)
                    self.accept(uri, lineno, file_index, parsed)
        except StorageUnavailable:
            raise
        except StorageError as e:
            # lineno is the last line read whole; the failure was on the next one
            self.problem(uri, lineno + 1 if lineno else None, _without_prefix(str(e), uri))
            return
        except (OSError, EOFError, zlib.error) as e:
            # e.g. a truncated or corrupt .gz file
            self.problem(uri, lineno + 1 if lineno else None,
                         f"cannot read the file ({e}); expected readable JSON Lines, optionally "
                         "gzip-compressed (.gz)")
            return
        if not seen_content:
            self.problem(uri, 1, "the file is empty; expected JSON Lines with one row per line, "
                                 f"like {_example(self.kind)}")

    def whole_file_json(self, uri: str, lineno: int, stripped: bytes) -> bool:
        """One clear error for a JSON array or pretty-printed object instead of one error per line."""
        if stripped.startswith(b"["):
            self.problem(uri, lineno, "the file is a JSON array; expected JSON Lines: one object per "
                                      "line, no enclosing [ ] (convert with: jq -c '.[]' IN > OUT)")
            return True
        if stripped == b"{":
            self.problem(uri, lineno, "the file looks like pretty-printed JSON (a lone `{` on this "
                                      "line); expected JSON Lines: each object complete on one line "
                                      "(convert with: jq -c . IN > OUT)")
            return True
        return False

    def parse_line(self, uri: str, lineno: int, line: bytes) -> Optional[ParsedRow]:
        """Columns in messages count from the start of the line as it is in the file."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            self.problem(uri, lineno, f"the line is not valid UTF-8 (byte 0x{line[e.start]:02x} "
                                      f"at column {e.start + 1}); expected UTF-8 text: re-save the "
                                      "file as UTF-8")
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            self.problem(uri, lineno, f"invalid JSON: {e.msg} at column {e.colno}; expected one "
                                      "complete JSON object per line")
            return None
        except RecursionError:
            self.problem(uri, lineno, "invalid JSON: nested too deeply; expected one flat JSON object "
                                      "per line")
            return None
        if "\\ud" in text.lower() and _has_lone_surrogate(obj):
            self.problem(uri, lineno, "the line escapes a lone UTF-16 surrogate (\\udXXX), which is "
                                      "not text; expected valid characters or complete surrogate pairs")
            return None
        parsed = parse_row(self.kind, obj, instruction=self.run.config.instruction or None,
                           source=f"{uri}:{lineno}")
        for message in parsed.errors:
            self.problem(uri, lineno, message)
        if parsed.errors:
            parsed.rows = []
        for key in parsed.unknown_keys:
            self.unknown.setdefault(key, (uri, lineno))
        return parsed

    def check_format(self, uri: str, lineno: int, parsed: ParsedRow, previous: Optional[str]) -> Optional[str]:
        if parsed.format is None:
            return previous
        if self.first_format is None:
            self.first_format = (parsed.format, uri, lineno)
        else:
            first, first_uri, first_line = self.first_format
            if parsed.format != first:
                parsed.rows = []
                # Reported where each run of another format starts, not on every line of it.
                if parsed.format != previous:
                    where = f"line {first_line}" if first_uri == uri else f"{first_uri}:{first_line}"
                    self.problem(uri, lineno, f"the format changes here to {describe_format(parsed.format)} "
                                              f"but {where} is {describe_format(first)}; expected one "
                                              "format in the whole dataset")
        return parsed.format

    def accept(self, uri: str, lineno: int, file_index: int, parsed: ParsedRow) -> None:
        if not parsed.rows:
            return
        location = (file_index << _LINE_BITS) | lineno
        self.rows.add(parsed.key, location)
        self.prompts.add(parsed.prompt, location)
        self.stats.add(parsed)
        if self.sink is not None and self.run.problems.count == 0:
            for row in parsed.rows:
                # Same JSON as canonical.to_json, without dataclasses.asdict's deep copy (3x faster).
                self.sink.write(json.dumps(vars(row), ensure_ascii=False) + "\n")

    def report_unknown_keys(self) -> None:
        if not self.unknown:
            return
        keys = ", ".join(f"`{k}`" for k in sorted(self.unknown))
        uri, line = min(self.unknown.values(), key=lambda v: (self.run.files.index(v[0]), v[1]))
        self.warn(uri, line, f"unknown field(s) {keys} are ignored (first seen here); expected only "
                             f"the fields of the dataset's format and `instruction`")

    def report_duplicates(self) -> None:
        import numpy as np

        if not len(self.rows.hashes):
            return
        hashes = np.frombuffer(self.rows.hashes, dtype=np.uint64)
        locations = np.frombuffer(self.rows.locations, dtype=np.uint64)
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        original = first[inverse.reshape(-1)]
        duplicates = np.nonzero(original != np.arange(len(hashes)))[0]
        self.stats.duplicates = int(len(duplicates))
        use = "evaluation" if self.kind == "eval" else "training"
        limit = self.run.config.max_errors
        for i in duplicates[:limit]:
            uri, line = self.run.where(int(locations[i]))
            o_uri, o_line = self.run.where(int(locations[original[i]]))
            same = f"line {o_line}" if o_uri == uri else f"{o_uri}:{o_line}"
            self.warn(uri, line, f"exact duplicate of {same}; a repeated row counts twice in {use}")
        self.run.warnings.count += max(0, len(duplicates) - limit)  # counted, not listed


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _example(kind: str) -> str:
    from rlhf.data.formats import EXAMPLES

    return EXAMPLES[kind]


def _without_prefix(message: str, uri: str) -> str:
    """Storage errors start with the URI; the problem line adds it again."""
    for prefix in (f"{uri}: ", f"{uri}:"):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _overlap(run: _Run) -> int:
    """Warn about eval prompts that also appear in the training (preference or prompt) data."""
    import numpy as np

    evals = run.prompt_hashes.get("eval")
    train = [run.prompt_hashes[k] for k in ("preference", "prompt", "labeled", "sft") if k in run.prompt_hashes]
    if evals is None or not len(evals.hashes) or not any(len(t.hashes) for t in train):
        return 0
    train_hashes = np.concatenate([np.frombuffer(t.hashes, dtype=np.uint64) for t in train])
    train_locations = np.concatenate([np.frombuffer(t.locations, dtype=np.uint64) for t in train])
    order = np.argsort(train_hashes, kind="stable")
    sorted_hashes = train_hashes[order]
    eval_hashes = np.frombuffer(evals.hashes, dtype=np.uint64)
    idx = np.minimum(np.searchsorted(sorted_hashes, eval_hashes), len(sorted_hashes) - 1)
    hits = np.nonzero(sorted_hashes[idx] == eval_hashes)[0]
    limit = run.config.max_errors
    run.warnings.count += max(0, len(hits) - limit)  # counted, not listed
    for i in hits[:limit]:
        uri, line = run.where(int(evals.locations[i]))
        t_uri, t_line = run.where(int(train_locations[order[idx[i]]]))
        run.warnings.add(Problem(uri, line, f"this eval prompt also appears in the training data "
                                            f"({t_uri}:{t_line}); expected held-out prompts, or the "
                                            "evaluation overstates quality", warning=True))
    return int(len(hits))


def _load_tokenizer(ref: str, notes: list[str]):
    if not ref:
        return None
    try:
        from rlhf import models
    except ModuleNotFoundError as e:
        if e.name != "rlhf.models":
            raise
        notes.append(f"token statistics skipped: rlhf.models is not available to load {ref!r}")
        return None
    return models.load_tokenizer(ref)


def run_validation(config: ValidateConfig, outputs: Optional[ValidationOutputs] = None) -> ValidationReport:
    """Validate every given dataset; write the outputs (to `outputs`, else `config.output_dir`)
    only when all are valid. Data problems are in the report, not raised; a bad configuration
    raises UserError."""
    config.validate()
    if outputs is None and config.output_dir:
        outputs = ValidationOutputs.in_dir(config.output_dir)
    notes: list[str] = []
    run = _Run(config, _load_tokenizer(config.tokenizer, notes))
    checks: dict[str, _DatasetCheck] = {}
    written = False
    try:
        with contextlib.ExitStack() as stack:
            for kind in KINDS:
                sink = None
                # labeled.jsonl and sft.jsonl are new: written only where the caller names them and
                # that dataset was given
                optional = {"labeled": (outputs.labeled, config.labeled_dataset),
                            "sft": (outputs.sft, config.sft_dataset)}.get(kind) if outputs is not None else None
                if outputs is not None and (optional is None or all(optional)):
                    sink = stack.enter_context(storage.open_write(outputs.dataset(kind), "wt"))
                uri = config.datasets().get(kind)
                if uri:
                    checks[kind] = _DatasetCheck(run, kind, uri, sink)
                    checks[kind].check()
            if run.problems.count:
                raise _Invalid()
            written = outputs is not None
    except _Invalid:
        pass  # the writers were discarded: no half-written outputs
    overlap = _overlap(run) if "eval" in checks else None

    stats: dict[str, Any] = {
        "datasets": {kind: c.stats.to_dict(config.prompt_sequence_length, config.target_sequence_length)
                     for kind, c in checks.items()},
        "instruction": config.instruction,
        "tokenizer": config.tokenizer or None,
        "prompt_sequence_length": config.prompt_sequence_length,
        "target_sequence_length": config.target_sequence_length,
        "warnings": {"count": run.warnings.count, "shown": run.warnings.lines()},
        "notes": notes,
    }
    if overlap is not None:
        stats["eval_prompts_in_training"] = overlap
    report = ValidationReport(problems=run.problems, warnings=run.warnings, stats=stats,
                              metrics=flat_metrics(stats))
    if written:
        storage.write_text(outputs.summary_md, summary.markdown(stats))
        storage.write_text(outputs.summary_html, summary.html(stats))
        storage.write_json(outputs.stats, stats)
        report.outputs = outputs
    return report
