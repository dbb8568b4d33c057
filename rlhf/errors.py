"""Errors a user can fix. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """A mistake in the user's input: the message says what, where and how to fix it."""


class StorageError(UserError):
    """A path, bucket or object that cannot be read or written."""
