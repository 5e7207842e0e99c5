"""Errors a user can cause. The commands print them as one line and exit with code 2."""


class QirError(Exception):
    """A problem with the user's input (file, model, IR text, pipeline, option)."""


class ParseError(QirError):
    """Malformed IR text; the message carries file:line:column and what was expected."""

    def __init__(self, message: str, line: int, column: int, source_name: str = "<text>", source_line: str = ""):
        self.line, self.column, self.source_name = line, column, source_name
        pointer = f"\n  {source_line}\n  {' ' * (column - 1)}^" if source_line else ""
        super().__init__(f"{source_name}:{line}:{column}: {message}{pointer}")


class VerifyError(QirError):
    """The IR breaks an invariant; the message reprints the IR around the failing op."""
