"""The two kinds of failure the CLI tells apart (docs/ARCHITECTURE.md, "Errors").

`EdgeBertError` is the user's input or environment (a checkpoint, an option, a file): one line on
stderr and exit status 2. `InternalError` is a broken invariant of our own (a pass handed a module
that an earlier pass should have shaped, a pipeline in the wrong order): one line that says it is a
bug, with the version, and exit status 3.
"""


class EdgeBertError(Exception):
    """Bad input (checkpoint, inputs, options) reported to the user without a traceback."""


class InternalError(Exception):
    """A bug in edgebert-tvm: an invariant that valid input cannot break."""
