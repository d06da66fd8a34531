"""Errors dyntok raises on bad input: one clear line, naming the file, line or config key."""


class DyntokError(Exception):
    """Base class of every dyntok error meant for the user (printed as one line, no traceback)."""


class ConfigError(DyntokError, ValueError):
    """A config key has a value dyntok cannot use (the message names the key and what was expected)."""


class DataError(DyntokError, ValueError):
    """Input data is missing or malformed (the message names the file, line and expected layout)."""


class CheckpointError(DyntokError, ValueError):
    """A checkpoint does not fit the model or method it is loaded into."""


class NumericalError(DyntokError):
    """The training loss became NaN or infinite (the message names the step and the checkpoint to resume)."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint holds more than tensors and plain data: unpickling it could run code, so it was refused.

    Each tool names its own opt-in (:meth:`for_tool`); ``str()`` gives the Python one.
    """

    def __init__(self, path: object, found: str) -> None:
        self.path, self.found = path, found
        super().__init__(self.for_tool("trust_checkpoint=True"))

    def for_tool(self, opt_in: str) -> str:
        """The message with ``opt_in`` (``--trust-checkpoint``, ``trust_checkpoint=true``) as the way to load it."""
        return (f"{self.path}: refused to load: it holds more than tensors and plain data ({self.found}); loading "
                f"it could run code from it. If you trust the file, pass {opt_in}")


def user_message(error: DyntokError, opt_in: str) -> str:
    """``error`` as one line for a command whose checkpoint opt-in is ``opt_in`` (its flag or config key)."""
    if isinstance(error, UntrustedCheckpointError):
        return error.for_tool(opt_in)
    return " ".join(str(error).split("\n"))
