"""Metrics for every trainer: one call, three sinks.

``Tracker.log(step, {"loss/total": 0.61, "reward/mean": 1.2})`` records namespaced metrics and

- every ``log_every`` steps (and at the last step) writes one log line with the step, the metrics,
  the rate (steps/s, and ``items/s`` when ``items`` is given: pairs, episodes, tokens) and the ETA;
- writes TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``) into ``tensorboard_dir``
  (the directory a KFP ``Output[Artifact]`` / Vertex TensorBoard reads);
- appends one JSON object per call to ``metrics.jsonl`` (``{"step": 3, "loss/total": ...}``).

``summary()`` returns the last value of every metric (what a component logs to KFP ``Metrics``).

For exact resume, ``state_dict()`` goes into a checkpoint and ``load_state_dict()`` restores the
history and truncates ``metrics.jsonl`` and the TensorBoard events to the checkpoint's step, so a
resumed run leaves the same files as an uninterrupted one.

Names are namespaced (``reward/mean``, ``loss/value``, ``policy/kl``, ``eval/accuracy``,
``time/generation_s``) and used verbatim in logs, TensorBoard and KFP.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from typing import Mapping, Optional

log = logging.getLogger("rlhf.train")


def _fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e6):
        return str(int(value))
    return f"{value:.4g}"


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Tracker:
    """Metrics logger: log line + TensorBoard + metrics.jsonl (see module docstring).

    Args:
        total_steps: the run's length, for the ETA and for always logging the last step.
        tensorboard_dir: where event files go; None for no TensorBoard.
        jsonl_path: the history file; None for none. Local paths (trainers stage remote outputs).
        log_every: steps between log lines.
        show: metric names in the log line (default: all of them).
        item_name: what ``items`` counts, shown as e.g. ``pairs/s``.
    """

    def __init__(self, total_steps: Optional[int] = None, tensorboard_dir: Optional[str] = None,
                 jsonl_path: Optional[str] = None, log_every: int = 10,
                 show: Optional[list[str]] = None, item_name: str = "items"):
        self.total_steps = total_steps
        self.tensorboard_dir = tensorboard_dir
        self.jsonl_path = jsonl_path
        self.log_every = max(int(log_every), 1)
        self.show = show
        self.item_name = item_name
        self.history: list[dict] = []
        self._writer = None
        self._purge_step: Optional[int] = None
        self.start(0)

    def start(self, step: int = 0) -> None:
        """Restart the clock for rates and ETA at ``step`` (done by the constructor and on resume;
        call it right before the training loop if setup happens after construction)."""
        self._start_time = time.monotonic()
        self._start_step = int(step)
        self._items = 0.0

    # -- sinks ---------------------------------------------------------------------------------

    def _tb(self):
        if self._writer is None and self.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(self.tensorboard_dir, exist_ok=True)
            # purge_step drops events a killed run wrote after the checkpoint it resumes from.
            self._writer = SummaryWriter(self.tensorboard_dir, purge_step=self._purge_step)
        return self._writer

    def log(self, step: int, metrics: Mapping[str, float], items: Optional[float] = None,
            line: Optional[bool] = None) -> None:
        """Record ``metrics`` at ``step`` (1-based: the number of optimizer steps done).
        ``items`` counts the work done since the previous call (pairs, episodes), for the rate.
        ``line`` forces (True) or suppresses (False) the log line; default: every ``log_every``."""
        now = time.monotonic()
        if items:
            self._items += float(items)
        row = {"step": int(step)}
        for name, value in metrics.items():
            row[name] = float(value.item() if hasattr(value, "item") else value)
        self.history.append(row)
        writer = self._tb()
        if writer is not None:
            for name, value in row.items():
                if name != "step":
                    writer.add_scalar(name, value, step)
        if self.jsonl_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.jsonl_path)), exist_ok=True)
            with open(self.jsonl_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        last = self.total_steps is not None and step >= self.total_steps
        if line if line is not None else (step % self.log_every == 0 or last):
            log.info(self.format_line(row, now))

    def format_line(self, row: Mapping[str, float], now: Optional[float] = None) -> str:
        now = time.monotonic() if now is None else now
        step = int(row["step"])
        elapsed = max(now - self._start_time, 1e-9)
        done = step - self._start_step
        rate = done / elapsed if done > 0 else float("nan")
        parts = [f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
        names = self.show if self.show is not None else [k for k in row if k != "step"]
        parts += [f"{k} {_fmt(row[k])}" for k in names if k in row]
        if self._items and done > 0:
            parts.append(f"{self.item_name}/s {self._items / elapsed:.3g}")
        parts.append(f"steps/s {rate:.3g}" if math.isfinite(rate) else "steps/s ?")
        if self.total_steps:
            parts.append(f"eta {_eta((self.total_steps - step) / rate if rate > 0 else float('nan'))}")
        return " | ".join(parts)

    # -- results -------------------------------------------------------------------------------

    def summary(self) -> dict[str, float]:
        """The last recorded value of every metric (for KFP Metrics and run summaries)."""
        out: dict[str, float] = {}
        for row in self.history:
            out.update({k: v for k, v in row.items() if k != "step"})
        return out

    def rate(self) -> dict[str, float]:
        """Throughput since the first ``log`` call: ``steps_per_s`` and ``items_per_s``."""
        if not self.history:
            return {"steps_per_s": 0.0, "items_per_s": 0.0}
        elapsed = max(time.monotonic() - self._start_time, 1e-9)
        done = self.history[-1]["step"] - self._start_step
        return {"steps_per_s": done / elapsed, "items_per_s": self._items / elapsed}

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- resume --------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: Mapping, step: int) -> None:
        """Restore the history up to ``step`` (a checkpoint's) and make the files agree with it."""
        self.history = [dict(r) for r in state.get("history", []) if r["step"] <= step]
        if self.jsonl_path:
            tmp = self.jsonl_path + ".tmp"
            os.makedirs(os.path.dirname(os.path.abspath(self.jsonl_path)), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                for row in self.history:
                    f.write(json.dumps(row) + "\n")
            os.replace(tmp, self.jsonl_path)
        self.close()
        self._purge_step = step + 1
        self.start(step)
        # Event files lost with the machine (a staged local directory): write the history again.
        if self.tensorboard_dir and self.history and not glob.glob(
                os.path.join(self.tensorboard_dir, "events.out.tfevents.*")):
            writer = self._tb()
            for row in self.history:
                for name, value in row.items():
                    if name != "step":
                        writer.add_scalar(name, value, row["step"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
