"""`flanpipe validate`: check template directories and pipeline files, collecting every problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flanpipe.collection import TEMPLATES_DIR, dataset_files, load_collection
from flanpipe.errors import CompileError
from flanpipe.plan import check_pipeline

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


def validate_paths(paths: Sequence[Path]) -> tuple[list[CompileError], int]:
    """Validate the given template dirs / pipeline files (default: templates/ and pipelines/).

    Returns:
      (problems, number of files checked).
    """
    paths = list(paths) or [TEMPLATES_DIR, *sorted(PIPELINES_DIR.glob("*.yaml"))]
    problems: list[CompileError] = []
    checked = 0
    for path in paths:
        if path.is_dir():
            checked += len(dataset_files(path)) + 1
            try:
                load_collection(path, errors=problems)
            except CompileError as e:  # the taxonomy itself failed to load
                problems.append(e)
        else:
            checked += 1
            try:
                check_pipeline(path)
            except CompileError as e:
                problems.append(e)
    return problems, checked
