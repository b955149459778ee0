"""Errors a user can fix. The command line prints them as one line and exits with code 2."""


class MoSEsError(Exception):
    """Base class: a problem with the user's input, config, task or files, never a bug."""


class ConfigError(MoSEsError, ValueError):
    """An invalid configuration value; the message names the field."""


class TaskError(MoSEsError, RuntimeError):
    """An unknown task, or a task operation at the wrong moment (e.g. end_task with no active task)."""


class CheckpointError(MoSEsError, ValueError):
    """A missing, corrupt or mismatched saved adapter or run; the message names the file."""


class DataError(MoSEsError, ValueError):
    """Missing or malformed task data or settings file; the message names the file and the place."""


class TrainingError(MoSEsError, RuntimeError):
    """Training cannot go on as configured (e.g. a non-finite loss); the message names the task and step."""


class StorageError(MoSEsError, OSError):
    """A file could not be written (disk full, no permission); the previous version of it is kept."""


class LockError(MoSEsError, RuntimeError):
    """The output directory is in use by another live process; the message names it."""
