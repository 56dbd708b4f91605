"""The exception types the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Callable

Namer = Callable[[str], str]  # a setting's field name -> what the reader calls it


class MnistCnnError(Exception):
    """A problem the user can fix: missing or corrupt data, a bad path, a wrong checkpoint."""


class ConfigError(MnistCnnError):
    """A setting the library refuses, named by its field (``lr``), never by a command-line flag.

    ``str()`` reads ``lr must be a positive number``; the CLI calls ``describe`` with its own
    namer and prints ``--lr must be a positive number``. A message that names other settings
    is a function of the namer: ``lambda name: f"int8 is for {name('fmt')} onnx"``.
    """

    def __init__(self, field: str, message: str | Callable[[Namer], str]):
        self.field, self.message = field, message
        super().__init__(self.describe(str))

    def describe(self, name: Namer) -> str:
        """The message with every setting called what ``name`` calls it."""
        rest = self.message(name) if callable(self.message) else self.message
        return f"{name(self.field)} {rest}"
