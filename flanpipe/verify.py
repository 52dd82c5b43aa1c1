"""`flanpipe verify`: re-check a compiled output's checksums, completeness and leakage rule."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from flanpipe.writers import TMP_SUFFIX, checksums

MANIFEST = "manifest.json"


def _check_files(root: Path, recorded: dict[str, str], exclude: set[str]) -> list[str]:
    problems = []
    actual = checksums(root, exclude=exclude)
    for rel, digest in sorted(recorded.items()):
        if rel not in actual:
            problems.append(f"{root / rel}: listed in the manifest but missing")
        elif actual[rel] != digest:
            problems.append(f"{root / rel}: sha256 {actual[rel][:12]}… does not match the manifest's {digest[:12]}…")
    for rel in sorted(set(actual) - set(recorded)):
        problems.append(f"{root / rel}: not listed in the manifest")
    return problems


def verify_output(out: str | Path) -> list[str]:
    """Every problem found in a compiled output directory (empty list: it is complete and intact)."""
    out = Path(out)
    top = out / MANIFEST
    if not top.exists():
        return [f"{out}: no {MANIFEST}: not a complete flanpipe output (an interrupted compile leaves none)"]
    try:
        manifest = json.loads(top.read_text())
    except json.JSONDecodeError as e:
        return [f"{top}: not valid JSON ({e.msg})"]
    problems = _check_files(out, manifest.get("files", {}), {MANIFEST})
    partial = [p for p in out.rglob(f"*{TMP_SUFFIX}*")]
    problems += [f"{p}: leftover temporary file" for p in partial]
    clusters = {d: info["cluster"] for d, info in manifest.get("datasets", {}).items()}
    for split in manifest.get("splits", []):
        split_manifest_path = out / split / MANIFEST
        if not split_manifest_path.exists():
            problems.append(f"{split_manifest_path}: missing")
            continue
        split_manifest = json.loads(split_manifest_path.read_text())
        problems += _check_files(out / split, split_manifest.get("files", {}), {MANIFEST})
        removed = set(split_manifest.get("removed_clusters", []))
        examples = out / split / "examples"
        seen = pq.read_table(examples, columns=["dataset"]).column("dataset").unique().to_pylist() \
            if examples.exists() else []
        leaked = sorted(d for d in seen if clusters.get(d) in removed)
        if leaked:
            problems.append(f"{out / split}: leakage: train examples from {', '.join(leaked)}, whose clusters "
                            f"({', '.join(sorted(removed))}) are held out of this split")
    return problems
