"""Domain errors. The server maps them to HTTP statuses with one JSON shape; the CLI to one-line messages."""

from __future__ import annotations

from typing import Any


class OpentracyError(Exception):
    """Base class of every error a user can cause or see."""

    status_code = 500
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            **({"details": self.details} if self.details else {}),
        }


class NotFound(OpentracyError):
    status_code = 404
    code = "not_found"


class Conflict(OpentracyError):
    """The request is valid but clashes with the current state (e.g. a write to a frozen version)."""

    status_code = 409
    code = "conflict"


class StaleWrite(Conflict):
    """Another write changed a version between this write's read and its commit; trying again is safe."""


class InvalidInput(OpentracyError):
    """Bad input from the user. `file`, `line` and `row` name where, when known."""

    status_code = 422
    code = "invalid_input"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        row: int | None = None,
        **kw: Any,
    ) -> None:
        where = ""
        if file is not None:
            where = f"{file}"
            if line is not None:
                where += f", line {line}"
            elif row is not None:
                where += f", row {row}"
            where += ": "
        elif line is not None:
            where = f"line {line}: "
        elif row is not None:
            where = f"row {row}: "
        super().__init__(where + message, file=file, line=line, row=row, **kw)
        self.reason = message


class Unauthorized(OpentracyError):
    status_code = 401
    code = "unauthorized"


class IntegrityError(OpentracyError):
    """Stored data does not match its recorded hash: the store was altered or corrupted."""

    status_code = 500
    code = "integrity_error"


class Cancelled(OpentracyError):
    status_code = 409
    code = "cancelled"
