"""Errors a user can cause. The CLI prints them in one line and exits non-zero."""


class CurateError(Exception):
    """A problem with the user's input, models or run directory (not a bug)."""


class InputError(CurateError):
    """A file, column or row of the input cannot be read or understood."""


class ModelError(CurateError):
    """A model name or directory cannot be resolved or loaded."""


class RunError(CurateError):
    """The run directory is in a state the command cannot work with."""
