"""Every Python block of docs/consuming.md runs against a compiled split.

A block is marked by an HTML comment on the line before its fence: ``<!-- test: prelude -->`` (the
one block that reads the manifest; its ``SPLIT_DIR = ...`` line is pointed at the test's split) or
``<!-- test: run -->``. Each ``run`` block executes in a fresh namespace after the prelude, the way
a reader pastes it after the first block. A block whose imports are not installed (torch, datasets,
duckdb, ...) is skipped with the missing names; that is checked with ``importlib.util.find_spec``
only, nothing is downloaded. Line numbers in tracebacks are the document's.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from compile_fixtures import compile_world, make_world
from conftest import missing_tool

DOC = Path(__file__).resolve().parent.parent / "docs" / "consuming.md"
SPLIT = "natural_language_inference"  # classification eval set (rte): every eval branch of the doc runs
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
MARK = re.compile(r"<!-- test: (prelude|run) -->\n\Z")
SPLIT_LINE = re.compile(r"^SPLIT_DIR = .*$", re.M)


def _blocks() -> list[tuple[str, str, int, str]]:
    """(kind or '', id, first line number, code) for every ```python block, in document order."""
    text = DOC.read_text()
    out, seen = [], {}
    for m in FENCE.finditer(text):
        before = text[:m.start()]
        mark = MARK.search(before)
        section = re.findall(r"^## (.+)$", before, re.M)
        slug = re.sub(r"\W+", "-", (section[-1] if section else "top").lower()).strip("-")
        seen[slug] = seen.get(slug, 0) + 1
        out.append((mark.group(1) if mark else "", f"{slug}-{seen[slug]}", before.count("\n") + 2, m.group(1)))
    return out


BLOCKS = _blocks()
PRELUDE = [b for b in BLOCKS if b[0] == "prelude"]
RUN = [b for b in BLOCKS if b[0] == "run"]


def _missing(code: str) -> list[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def _exec(code: str, line: int, namespace: dict) -> None:
    # Pad with newlines so the compiled code's line numbers are the document's.
    exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), namespace)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("consuming-world")
    make_world(root)
    compile_world(root)
    split = root / "out" / SPLIT
    return split


@pytest.fixture(autouse=True)
def _sandbox(tmp_path, monkeypatch):
    """Snippets write nothing outside tmp_path and reach no network (HF datasets reads these at import)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_every_python_block_is_marked_and_compiles():
    unmarked = [f"{DOC.name}:{line}" for kind, _, line, _ in BLOCKS if not kind]
    assert not unmarked, f"python blocks without a '<!-- test: run -->' mark: {unmarked}"
    assert len(PRELUDE) == 1 and len(SPLIT_LINE.findall(PRELUDE[0][3])) == 1
    assert len(RUN) >= 8
    for _, _, line, code in BLOCKS:
        compile("\n" * (line - 1) + code, str(DOC), "exec")


@pytest.mark.parametrize("block", RUN, ids=[b[1] for b in RUN])
def test_snippet_runs(block, split_dir):
    _, _, line, code = block
    missing = _missing(PRELUDE[0][3] + "\n" + code)
    if missing:
        missing_tool(f"needs {', '.join(missing)} (not installed)")
    _, _, prelude_line, prelude = PRELUDE[0]
    namespace: dict = {"__name__": "consuming_snippet"}
    _exec(SPLIT_LINE.sub(f"SPLIT_DIR = Path({str(split_dir)!r})", prelude), prelude_line, namespace)
    _exec(code, line, namespace)
