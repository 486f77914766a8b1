"""Exceptions that carry a one-line cause a user can act on."""


class PipelineError(Exception):
    """Base class: the message names the cause (URL, key, row, value)."""


class ConfigError(PipelineError):
    """The configuration is invalid; the message names the key path and the allowed values."""


class IngestionError(PipelineError):
    """The API could not be read or its payload could not be turned into records."""


class DataError(PipelineError):
    """The records cannot be turned into features (no numeric field, too few rows, bad labels)."""
