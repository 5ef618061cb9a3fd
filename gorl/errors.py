"""Errors that GoRL reports to the user as one line (see ``gorl.cli``)."""


class GoRLError(Exception):
    """Base class: the CLI prints ``gorl: error: <message>`` and exits non-zero, no traceback."""


class ConfigError(GoRLError, ValueError):
    """A configuration value is invalid (unknown task, bad shape, unsupported action spec...)."""


class CheckpointError(GoRLError):
    """A checkpoint is missing, unreadable or does not match the configuration."""


class NonFiniteError(GoRLError, FloatingPointError):
    """Training produced a NaN/Inf; the message names phase, stage and frame."""


class DataQualityError(GoRLError):
    """A refit's data failed its quality gate (``refinement.min_data_return``)."""


#: ``gorl validate`` without a checkpoint would score a freshly initialised policy and exit 0
#: (refused by :mod:`gorl.config_check` and, for an empty one, by :mod:`gorl.lightning_cli`).
VALIDATE_NEEDS_CHECKPOINT = ("gorl validate scores a trained policy: give --ckpt_path (a checkpoint file, or last for the newest "
                             "run of this config)")


class EnvWorkerError(GoRLError):
    """An env worker process died; its own traceback is printed above the one-line error."""
