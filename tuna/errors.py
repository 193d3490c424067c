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


class EmptyOutputError(TunaError):
    """A step ended with nothing in its output: it stops there with the counts by reason (and where the failures
    are), instead of the next step reporting an empty input."""

    def __init__(self, step: str, *, out: object, todo: int, noun: str, done: str, reasons: dict[str, int],
                 failures: object | None = None, hint: str = ""):
        self.step, self.todo, self.reasons = step, todo, dict(reasons)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        if todo == 0:
            why = ": the input slice holds none (check --offset/--limit)"
        else:
            why = f" ({counts})" if counts else " (no reason recorded)"
        msg = f"{step}: 0 of {todo} {noun} {done}{why}; the output holds no records"
        if failures is not None and todo:
            msg += f"; failures in {failures}"
        super().__init__(msg + (f"; {hint}" if hint else ""), path=out)
