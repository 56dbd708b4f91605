"""The one exception type the CLI turns into a one-line message and exit code 2."""


class MnistCnnError(Exception):
    """A problem the user can fix: missing or corrupt data, a bad path, a wrong checkpoint."""
