"""The one error type users see: a one-line message, exit status 2 from the CLI."""


class EdgeBertError(Exception):
    """Bad input (checkpoint, inputs, options) reported to the user without a traceback."""
