"""Errors a user can fix, and outages a user can only wait out. The CLI prints either without a
traceback: a mistake exits 2, an outage `OUTAGE_EXIT` (sysexits' EX_TEMPFAIL: try again later)."""

OUTAGE_EXIT = 75


class UserError(Exception):
    """A mistake in the user's input: the message says what, where and how to fix it."""


class StorageError(UserError):
    """A path, bucket or object that cannot be read or written."""


class StorageUnavailable(StorageError):
    """Cloud Storage did not answer (or kept failing) through every retry: nothing is wrong with the
    data or the request, so it is not reported as a data problem, and a retry later may succeed."""


def exit_code(error: UserError) -> int:
    return OUTAGE_EXIT if isinstance(error, StorageUnavailable) else 2


class reported_as_task_failure:
    """In a pipeline task: a UserError ends the task with its message alone and exit code 2 (an
    outage: `OUTAGE_EXIT`), so the task's log (the Vertex console's, the Kubeflow UI's) says what to
    fix, not where Python was."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, UserError):
            import sys
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(exit_code(error)) from None
        return False
