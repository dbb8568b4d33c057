"""Follow a job to its end: print each state change, cancel it when this process is told to stop
(SIGTERM: the pipeline run was cancelled), and raise with the job's own error when it fails.
Both platforms (``rlhf.jobs.vertex``, ``rlhf.jobs.kubernetes``) wait through this."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

# Seconds between polls (default 30: a job runs for hours; tests poll faster).
POLL_ENV = "RLHF_JOB_POLL_SECONDS"


def say(message: str) -> None:
    """A line in the task's log, at once (a launcher waits for hours between lines)."""
    print(message, flush=True)


def poll_interval() -> float:
    return float(os.environ.get(POLL_ENV) or 30)


@dataclass(frozen=True)
class Status:
    state: str          # the platform's own word: JOB_STATE_RUNNING, Running, Complete, ...
    done: bool = False
    failed: bool = False
    message: str = ""   # the job's error when it failed


class JobFailed(RuntimeError):
    """The job ended without succeeding; the message is the job's own error."""


class JobCancelled(JobFailed):
    """This process was told to stop (SIGTERM) and cancelled the job."""


class _Terminated(BaseException):  # raised out of whatever the main thread was doing
    pass


def follow(name: str, poll: Callable[[], Status], cancel: Callable[[], None], *,
           interval_s: Optional[float] = None, cancel_wait_s: float = 20.0,
           say: Callable[[str], None] = say) -> Status:
    """Poll until the job is done; returns its last Status when it succeeded, raises JobFailed
    (its error) when it failed and JobCancelled after SIGTERM (having called `cancel`, then
    followed the job for up to `cancel_wait_s`: a pipeline task gets ~30 s after SIGTERM)."""
    interval_s = poll_interval() if interval_s is None else interval_s
    previous = _install_sigterm()
    last: Optional[Status] = None
    try:
        while True:
            status = poll()
            if last is None or status.state != last.state:
                say(f"{name}: {status.state}" + (f" ({status.message})" if status.message else ""))
            last = status
            if status.done:
                break
            time.sleep(interval_s)
    except _Terminated:
        _restore(previous)
        say(f"{name}: the pipeline task was told to stop; cancelling the job")
        cancel()
        deadline = time.monotonic() + cancel_wait_s
        while time.monotonic() < deadline:
            status = poll()
            if last is None or status.state != last.state:
                say(f"{name}: {status.state}")
            last = status
            if status.done:
                break
            time.sleep(min(interval_s, 2.0))
        raise JobCancelled(f"{name} was cancelled with the pipeline run (last state: "
                           f"{last.state if last else 'unknown'})") from None
    finally:
        _restore(previous)
    if last.failed:
        raise JobFailed(f"{name} ended {last.state}: {last.message or 'no error message'}")
    return last


def _install_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None  # signals reach the main thread only

    def handler(signum, frame):
        raise _Terminated()
    return signal.signal(signal.SIGTERM, handler)


def _restore(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
