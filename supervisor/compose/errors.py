"""Errors raised while reading a target composition or a container back."""


class ComposeError(ValueError):
    """A composition (or an engine object read back) cannot be turned into a config."""


class InvalidPortDefinition(ComposeError):
    """A `ports` entry does not follow the docker-py port grammar."""


class InvalidNameError(ComposeError):
    """An engine object name does not follow the `<prefix>_<name>` convention."""
