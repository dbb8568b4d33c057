"""rlhf.tracking: log lines, TensorBoard events, metrics.jsonl, summaries and resume truncation."""

from __future__ import annotations

import json
import logging

from rlhf.tracking import Tracker


def _events(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_writes_lines_tensorboard_and_jsonl(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rlhf.train")
    tracker = Tracker(total_steps=4, tensorboard_dir=str(tmp_path / "tb"),
                      jsonl_path=str(tmp_path / "metrics.jsonl"), log_every=2, item_name="pairs")
    for step in range(1, 5):
        tracker.log(step, {"loss/total": 1.0 / step, "reward/mean": float(step)}, items=8)
    tracker.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # steps 2 and 4
    assert lines[0].startswith("step 2/4 | loss/total 0.5 | reward/mean 2 | pairs/s ")
    assert "eta " in lines[0] and "steps/s " in lines[0]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[2] == {"step": 3, "loss/total": 1 / 3, "reward/mean": 3.0}
    events = _events(tmp_path / "tb")
    assert [s for s, _ in events["loss/total"]] == [1, 2, 3, 4]
    assert abs(events["loss/total"][1][1] - 0.5) < 1e-7
    assert tracker.summary() == {"loss/total": 0.25, "reward/mean": 4.0}


def test_summary_keeps_the_last_value_of_sparse_metrics():
    tracker = Tracker()
    tracker.log(1, {"loss/total": 2.0, "eval/accuracy": 0.5})
    tracker.log(2, {"loss/total": 1.0})
    assert tracker.summary() == {"loss/total": 1.0, "eval/accuracy": 0.5}


def test_resume_truncates_history_jsonl_and_events(tmp_path):
    """A run killed after step 5 resumes from a step-3 checkpoint: files end as if never killed."""
    kw = dict(total_steps=6, tensorboard_dir=str(tmp_path / "tb"), jsonl_path=str(tmp_path / "m.jsonl"))
    first = Tracker(**kw)
    for step in range(1, 6):
        first.log(step, {"loss/total": float(step)})
        if step == 3:
            saved = first.state_dict()
    first.close()

    resumed = Tracker(**kw)
    resumed.load_state_dict(saved, step=3)
    for step in range(4, 7):
        resumed.log(step, {"loss/total": 10.0 * step})
    resumed.close()
    rows = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["loss/total"] for r in rows] == [1, 2, 3, 40, 50, 60]
    assert [r["loss/total"] for r in resumed.history] == [1, 2, 3, 40, 50, 60]
    assert [v for _, v in _events(tmp_path / "tb")["loss/total"]] == [1, 2, 3, 40, 50, 60]


def test_resume_without_event_files_writes_the_history_again(tmp_path):
    """Staged TensorBoard files lost with a preempted machine are rebuilt from the checkpoint."""
    first = Tracker(tensorboard_dir=str(tmp_path / "lost"))
    for step in (1, 2):
        first.log(step, {"loss/total": float(step)})
    saved = first.state_dict()
    first.close()
    resumed = Tracker(tensorboard_dir=str(tmp_path / "fresh"))
    resumed.load_state_dict(saved, step=2)
    resumed.log(3, {"loss/total": 3.0})
    resumed.close()
    assert [v for _, v in _events(tmp_path / "fresh")["loss/total"]] == [1, 2, 3]
