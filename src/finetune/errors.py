"""Errors a user can fix. The CLI prints them without a traceback."""


class FinetuneError(Exception):
    """An error the user can fix; the CLI prints it and exits with `exit_code`."""

    exit_code = 1


class UsageError(FinetuneError):
    """Bad command-line arguments (a flag out of range, flags that do not go together)."""

    exit_code = 2


class RecipeError(FinetuneError):
    """A bad recipe or setting (file:line where known)."""

    exit_code = 2


class DataError(FinetuneError):
    """A bad data file (file:line where known)."""

    exit_code = 2


class MissingDependencyError(FinetuneError):
    """An optional dependency is not installed; the message carries the install hint."""

    exit_code = 1
