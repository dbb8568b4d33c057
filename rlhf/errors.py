"""Errors a user can fix. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """A mistake in the user's input: the message says what, where and how to fix it."""


class StorageError(UserError):
    """A path, bucket or object that cannot be read or written."""


class reported_as_task_failure:
    """In a pipeline task: a UserError ends the task with its message alone and exit code 2, so the
    task's log (the Vertex console's, the Kubeflow UI's) says what to fix, not where Python was."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, UserError):
            import sys
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return False
