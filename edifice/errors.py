"""Errors a user can cause. Each message says what was asked for, what was found and what to do next."""


class EdificeError(Exception):
    """Base class for user-facing errors (the app shows their message, never a traceback)."""


class CheckpointError(EdificeError, ValueError):
    """A checkpoint file is missing, unreadable, truncated, or of the wrong model kind."""
