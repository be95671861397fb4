"""Errors that a stage reports as one line and a non-zero exit."""


class EditLMError(Exception):
    """A user-facing error: bad params, missing input, unknown source or model."""


class ConfigError(EditLMError):
    """An unknown or invalid key in params.yaml."""
