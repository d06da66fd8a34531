"""Errors dyntok raises on bad input: one clear line, naming the file, line or config key."""


class DyntokError(Exception):
    """Base class of every dyntok error meant for the user (printed as one line, no traceback)."""


class ConfigError(DyntokError, ValueError):
    """A config key has a value dyntok cannot use (the message names the key and what was expected)."""


class DataError(DyntokError, ValueError):
    """Input data is missing or malformed (the message names the file, line and expected layout)."""


class CheckpointError(DyntokError, ValueError):
    """A checkpoint does not fit the model or method it is loaded into."""
