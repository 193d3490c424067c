"""The one exception users see: a message that names the file, line and field (or config key)."""

from __future__ import annotations


class TunaError(Exception):
    """An error caused by the user's input or environment, printed as one line without a traceback."""

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}" + (f":{line}" if line is not None else "")
        if field:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)
