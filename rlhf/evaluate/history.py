"""The PPO training history for the report's curves: `metrics.jsonl` rows (`{"step": 3, "reward/mean":
...}`, what `rlhf.tracking.Tracker` writes), or, when a directory holds no such file, the scalars of
its TensorBoard event files (what a KFP `tensorboard_logs` artifact holds)."""

from __future__ import annotations

import json
import struct
from typing import Iterator

from rlhf import storage
from rlhf.errors import UserError

HISTORY_FILE = "metrics.jsonl"


def read_history(uri: str) -> list[dict]:
    """Rows `{"step": N, name: value, ...}` sorted by step, from a metrics.jsonl file, a directory
    holding one (searched one level down too), or a directory of TensorBoard event files."""
    if not uri:
        return []
    if uri.endswith((".jsonl", ".jsonl.gz", ".json")):
        return _read_jsonl(storage.expand(uri)[0])
    for pattern in (storage.join(uri, HISTORY_FILE), storage.join(uri, "*", HISTORY_FILE)):
        try:
            return _read_jsonl(storage.expand(pattern)[0])
        except UserError:
            continue
    try:
        events = storage.expand(storage.join(uri, "**", "*tfevents*"))
    except UserError:
        events = []
    if events:
        return _read_events(events)
    raise UserError(f"training history {uri}: no {HISTORY_FILE} and no TensorBoard event files there; "
                    f"give the metrics.jsonl that `rlhf tune` writes, the directory that holds it, or "
                    f"its TensorBoard log directory")


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with storage.open_read(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{n}: not a JSON line ({e}); the training history must be the "
                                f"metrics.jsonl that `rlhf tune` writes") from None
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
    rows.sort(key=lambda r: r["step"])
    return rows


def _records(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file: length (u64), its CRC, data, data CRC (CRCs not checked:
    a torn last record is simply dropped)."""
    with storage.open_read(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def _read_events(paths: list[str]) -> list[dict]:
    from tensorboard.compat.proto import event_pb2

    by_step: dict[int, dict] = {}
    for path in paths:
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor") and value.tensor.float_val:
                    number = value.tensor.float_val[0]
                else:
                    continue
                by_step.setdefault(int(event.step), {"step": int(event.step)})[value.tag] = float(number)
    return [by_step[s] for s in sorted(by_step)]
