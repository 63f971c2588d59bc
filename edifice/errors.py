"""Errors a user can cause. Each message says what was asked for, what was found and what to do next."""


class EdificeError(Exception):
    """Base class for user-facing errors (the app shows their message, never a traceback)."""


class CheckpointError(EdificeError, ValueError):
    """A checkpoint file is missing, unreadable, truncated, or of the wrong model kind."""


class CheckpointNotFoundError(CheckpointError):
    """What was asked for does not exist: no such local folder, Hub repository, revision or file."""


class HubUnreachableError(CheckpointError):
    """The Hugging Face Hub could not be reached (or offline mode is on) and the files are not in the cache."""


class UnknownPresetError(EdificeError, ValueError):
    """A name that is neither a preset, a local folder nor a Hub repository id."""
