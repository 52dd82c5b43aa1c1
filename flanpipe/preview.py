"""Render a few bundled sample examples of one dataset, for eyeballing templates."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from flanpipe.collection import Collection, load_collection
from flanpipe.errors import CompileError, did_you_mean
from flanpipe.sources import read_samples
from flanpipe.templates import Rendered

MODES = ("natural", "dataset_name", "none")


@dataclass(frozen=True)
class PreviewRow:
    key: str
    rendered: Rendered


def render_samples(dataset: str, *, template: int | None = None, n: int = 5, split: str = "train",
                   mode: str = "natural", collection: Collection | None = None) -> list[PreviewRow]:
    """Render the first ``n`` samples of ``split`` (from the collection's ``samples/``); with no template given,
    cycle through all ten."""
    collection = collection or load_collection()
    if dataset not in collection.datasets:
        raise CompileError(f"unknown dataset {dataset!r}{did_you_mean(dataset, collection.datasets)}")
    if mode not in MODES:
        raise CompileError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if template is not None and not 0 <= template < 10:
        raise CompileError(f"--template: expected 0..9, got {template}")
    compiled = collection.compiled(dataset)
    rows: list[PreviewRow] = []
    samples = collection.root / "samples"
    for i, (key, features) in enumerate(islice(read_samples(compiled.spec, split, samples), n)):
        values = compiled.fields_of(features)
        if values is None:
            continue
        t = template if template is not None else i % len(compiled.templates)
        rows.append(PreviewRow(key, compiled.render(values, t, mode=mode)))  # type: ignore[arg-type]
    return rows
