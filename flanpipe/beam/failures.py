"""Worker errors, one file each beside the output, so the driver names the first one in a line on every runner.

Runners carry a worker's exception back in different shapes: in-process as itself, Dask
pickled, multi-processing and Dataflow as a long traceback text inside a RuntimeError. A stage
that fails records the error's type and message here first, and the driver reports that.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flanpipe import storage
from flanpipe.errors import CompileError, JobError, rebuild
from flanpipe.files import read_json, write_json

ERRORS_DIR = ".errors"


def _message(stage: str, error: BaseException) -> tuple[str, str]:
    if isinstance(error, CompileError):
        return type(error).__name__, str(error)
    notes = "; ".join(getattr(error, "__notes__", ()))
    return JobError.__name__, (f"stage {stage!r} failed: {type(error).__name__}: {error}"
                               + (f" ({notes})" if notes else "") + " (run with --debug for the traceback)")


def record(out_dir: str, stage: str, error: BaseException) -> None:
    """Write ``error`` (raised in ``stage``) as ``<out_dir>/.errors/<digest>.json``; the same error once."""
    kind, message = _message(stage, error)
    name = hashlib.sha256(f"{kind}\0{message}".encode()).hexdigest()[:16]
    write_json(storage.join(out_dir, ERRORS_DIR, f"{name}.json"),
               {"stage": stage, "type": kind, "message": message, "time": time.time()}, unique_tmp=True)


@contextmanager
def reported(out_dir: str, stage: str) -> Iterator[None]:
    """Record any exception raised inside (then let it propagate to the runner)."""
    try:
        yield
    except Exception as e:
        try:
            record(out_dir, stage, e)
        except Exception as unwritable:  # the error itself matters more than its record
            e.add_note(f"(could not record this error for the driver: {unwritable})")
        raise


def first(out_dir: str) -> CompileError | None:
    """The earliest recorded worker error, rebuilt as its flanpipe error type; None when none was recorded."""
    base = storage.join(out_dir, ERRORS_DIR)
    if not storage.exists(base):
        return None
    found = [read_json(storage.join(base, f)) for f in storage.list_files(base) if f.endswith(".json")]
    if not found:
        return None
    earliest = min(found, key=lambda r: (r["time"], r["message"]))
    return rebuild(earliest["type"], earliest["message"])


def clear(out_dir: str) -> None:
    storage.remove_tree(storage.join(out_dir, ERRORS_DIR))


def job_failure(out_dir: str, error: BaseException) -> CompileError:
    """What to tell the user when the job raised ``error``: the first worker error, or the job's own last line."""
    recorded = first(out_dir)
    if recorded is not None:
        return recorded
    if isinstance(error, CompileError):
        return error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return JobError(f"the Beam job failed: {last[:500]} (run with --debug for the traceback)")
