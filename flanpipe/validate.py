"""`flanpipe validate`: check template directories and pipeline files, collecting every problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flanpipe.collection import TEMPLATES_DIR, dataset_files, load_collection
from flanpipe.paths import PIPELINES_DIR
from flanpipe.errors import CompileError
from flanpipe.plan import check_pipeline


def validate_paths(paths: Sequence[Path]) -> tuple[list[CompileError], int]:
    """Validate the given template dirs / pipeline files (default: templates/ and pipelines/).

    Pipelines are checked against the first template dir given (else the default collection).

    Returns:
      (problems, number of files checked).
    """
    paths = list(paths) or [TEMPLATES_DIR, *sorted(PIPELINES_DIR.glob("*.yaml"))]
    templates = next((p for p in paths if p.is_dir()), TEMPLATES_DIR)
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
                check_pipeline(path, templates=templates)
            except CompileError as e:
                problems.append(e)
    return problems, checked
