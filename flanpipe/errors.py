"""Project exception types: one per kind of problem, each formatted as one or two lines."""

from __future__ import annotations

import difflib


class CompileError(ValueError):
    """Base of every user-facing flanpipe error; the CLI prints it without a traceback."""


def _location(path: object, line: int | None, field: str | None) -> str:
    parts = [str(path)]
    if line is not None:
        parts.append(str(line))
    loc = ":".join(parts)
    return f"{loc}: {field}" if field else loc


class SpecError(CompileError):
    """A YAML file (dataset, taxonomy or pipeline) is malformed or inconsistent."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        super().__init__(f"{_location(path, line, field)}: {message}")


class TemplateError(CompileError):
    """A template does not compile, uses an undeclared variable, or fails to render."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        super().__init__(f"{_location(path, line, field)}: {message}")


class SourceError(CompileError):
    """Example data cannot be read: missing directory, unprepared dataset, bad slice, missing feature."""


class TokenizerError(CompileError):
    """The tokenizer model is missing, unreadable or incompatible."""


class OutputError(CompileError):
    """The output directory is unusable or its contents fail verification."""


class AuditError(CompileError):
    """An audit option is invalid (unknown rule name, bad n-gram size)."""


def did_you_mean(name: str, choices: list[str] | set[str] | tuple[str, ...], n: int = 3) -> str:
    """Return ' (did you mean X?)' for the closest known names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
