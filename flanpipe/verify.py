"""`flanpipe verify`: re-check a compiled output's checksums, completeness and leakage rule."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.parquet as pq

from flanpipe import manifest, storage
from flanpipe.errors import OutputError
from flanpipe.files import TMP_MARK, checksums
from flanpipe.manifest import MANIFEST, SplitManifest, TopManifest


def datasets_in_split(split_url: str) -> list[str]:
    """The datasets present in a split's rendered train examples (examples/*.parquet)."""
    seen: set[str] = set()
    for rel in storage.list_files(split_url):
        if rel.startswith("examples/") and rel.endswith(".parquet"):
            with storage.open_file(storage.join(split_url, rel)) as f:
                seen.update(pq.read_table(f, columns=["dataset"]).column("dataset").unique().to_pylist())
    return sorted(seen)


def leakage(clusters: dict[str, str], removed: Sequence[str], datasets: Sequence[str]) -> list[str]:
    """Datasets found in a train mixture that belong to a cluster removed from it."""
    return sorted(d for d in set(datasets) if clusters.get(d) in set(removed))


def _check_files(root: str, recorded: dict[str, str]) -> list[str]:
    problems = []
    actual = checksums(root, exclude=[MANIFEST])
    for rel, digest in sorted(recorded.items()):
        if rel not in actual:
            problems.append(f"{storage.join(root, rel)}: listed in the manifest but missing")
        elif actual[rel] != digest:
            problems.append(f"{storage.join(root, rel)}: sha256 {actual[rel][:12]}… does not match the "
                            f"manifest's {digest[:12]}…")
    for rel in sorted(set(actual) - set(recorded)):
        problems.append(f"{storage.join(root, rel)}: not listed in the manifest")
    return problems


def verify_output(out: str) -> list[str]:
    """Every problem found in a compiled output directory (empty list: it is complete and intact)."""
    out = storage.resolve(out)
    top_url = storage.join(out, MANIFEST)
    if not storage.exists(top_url):
        return [f"{out}: no {MANIFEST}: not a complete flanpipe output (an interrupted compile leaves none)"]
    try:
        top = manifest.load(top_url, TopManifest)
    except OutputError as e:
        return [str(e)]
    problems = _check_files(out, top.files)
    problems += [f"{storage.join(out, rel)}: leftover temporary file" for rel in storage.list_files(out)
                 if TMP_MARK in rel.rsplit("/", 1)[-1]]
    clusters = {d: info.cluster for d, info in top.datasets.items()}
    for split in top.splits:
        split_url = storage.join(out, split)
        if not storage.exists(storage.join(split_url, MANIFEST)):
            problems.append(f"{storage.join(split_url, MANIFEST)}: missing")
            continue
        try:
            split_manifest = manifest.load(storage.join(split_url, MANIFEST), SplitManifest)
        except OutputError as e:
            problems.append(str(e))
            continue
        problems += _check_files(split_url, split_manifest.files)
        removed = split_manifest.removed_clusters
        leaked = leakage(clusters, removed, datasets_in_split(split_url))
        if leaked:
            problems.append(f"{split_url}: leakage: train examples from {', '.join(leaked)}, whose clusters "
                            f"({', '.join(removed)}) are held out of this split")
    return problems
