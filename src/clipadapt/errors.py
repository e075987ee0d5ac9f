"""Exceptions a user can act on: each names the file, field or model involved and what was expected."""

from __future__ import annotations


class ClipadaptError(Exception):
    """Base class of every error clipadapt raises on purpose (the CLI prints these without a traceback)."""


class FeatureDirError(ClipadaptError):
    """A feature directory or one of its files is missing, malformed or inconsistent."""


class DatasetError(ClipadaptError):
    """A dataset specification, split file, image or label is missing or malformed."""


class WeightsUnavailableError(ClipadaptError):
    """Model weights cannot be found locally and cannot be downloaded (offline)."""


class WeightsFileError(ClipadaptError):
    """A checkpoint file is not a weights file: a pickle holding code or objects other than tensors (refused
    unexecuted by weights-only loading), or bytes that no loader recognises."""


class CacheError(ClipadaptError):
    """The feature cache is unreadable or an entry does not match its key."""


class NotFittedError(ClipadaptError, AttributeError):
    """An estimator was used before `fit`."""


class MissingDependencyError(ClipadaptError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class ConfigError(ClipadaptError, ValueError):
    """An argument or hyper-parameter is out of its valid range."""


class AdapterError(ClipadaptError):
    """An IMO adapter checkpoint is missing, malformed, or does not fit the model."""


class ProtocolError(ClipadaptError):
    """An evaluation protocol would select or fit on test data (e.g. a validation split that is the test split)."""


class HeadFileError(ClipadaptError):
    """A head file (`clipadapt fit`) is missing, a pickle, not a clipadapt head, or was altered after it was written."""


class HeadMismatchError(ClipadaptError):
    """A head is applied to features, images or an encoder of another model, dimension or class list."""


class OutputError(ClipadaptError):
    """An output path cannot be used: it is, lies inside or contains an input, is not writable, is a file where a
    directory is needed (or the reverse), or is an existing non-empty directory without --overwrite."""
