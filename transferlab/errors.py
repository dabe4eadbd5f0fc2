"""Exceptions with messages a researcher can act on."""


class TransferlabError(Exception):
    """Base class for errors raised by transferlab."""


class ConfigError(TransferlabError, ValueError):
    """A configuration is invalid: the message names the key and the file."""
