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


class _Located(CompileError):
    """An error at a place in a YAML file: ``path:line: field: message``.

    Also constructible from the one formatted message alone, as Beam and pickling rebuild an
    exception (``type(e)(message)``), so the error keeps its type across worker processes.
    """

    def __init__(self, path: object, line: int | None = None, field: str | None = None,
                 message: str | None = None, *, example: str | None = None):
        if message is None:  # the formatted message only
            self.path, self.line, self.field, self.message, self.example = None, None, None, None, None
            super().__init__(str(path))
            return
        self.path, self.line, self.field, self.message, self.example = path, line, field, message, example
        shown = f"example {example!r}: {message}" if example is not None else message
        super().__init__(f"{_location(path, line, field)}: {shown}")

    def for_example(self, key: str) -> _Located:
        """The same error naming the example it happened on (unchanged if it names one already)."""
        if self.message is None or self.example is not None:
            return self
        return type(self)(self.path, self.line, self.field, self.message, example=key)


class SpecError(_Located):
    """A YAML file (dataset, taxonomy or pipeline) is malformed or inconsistent."""


class TemplateError(_Located):
    """A template does not compile, uses an undeclared variable or a refused construct, exceeds a limit, or fails
    to render."""


class SourceError(CompileError):
    """Example data cannot be read: missing directory, unprepared dataset, bad slice, missing feature."""


class TokenizerError(CompileError):
    """The tokenizer model is missing, unreadable or incompatible."""


class OutputError(CompileError):
    """The output directory is unusable or its contents fail verification."""


class AuditError(CompileError):
    """An audit option is invalid (unknown rule name, bad n-gram size)."""


class JobError(CompileError):
    """The Beam job failed for a reason that is not one of the above (a bug, a lost worker, a full disk)."""


def rebuild(type_name: str, message: str) -> CompileError:
    """The flanpipe error named ``type_name`` with ``message`` (a worker's error, rebuilt in the driver)."""
    kind = next((k for k in _KINDS if k.__name__ == type_name), None)
    return kind(message) if kind is not None else JobError(message)


_KINDS = (SpecError, TemplateError, SourceError, TokenizerError, OutputError, AuditError, JobError, CompileError)


def did_you_mean(name: str, choices: list[str] | set[str] | tuple[str, ...], n: int = 3) -> str:
    """Return ' (did you mean X?)' for the closest known names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
