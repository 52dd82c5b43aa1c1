"""Training the default SentencePiece model from the rendered collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from flanpipe.collection import Collection, load_collection
from flanpipe.sources import read_examples
from flanpipe.spec import SamplesSource, load_pipeline
from flanpipe.tokenizer import train_tokenizer


def collection_texts(collection: Collection, source: object) -> Iterator[str]:
    """Every template's input and target for every train and eval example, in a fixed order."""
    for name in sorted(collection.datasets):
        compiled = collection.compiled(name)
        for split in compiled.spec.source.splits:
            for _, features in read_examples(compiled.spec, split, source):  # type: ignore[arg-type]
                values = compiled.fields_of(features)
                if values is None:
                    continue
                for t in range(len(compiled.templates)):
                    r = compiled.render(values, t)
                    yield r.inputs
                    yield r.targets


def train_from_collection(out: Path, *, vocab_size: int, pipeline: Path | None = None) -> tuple[Path, int]:
    """Train a tokenizer on the collection rendered from the pipeline's source (default: samples)."""
    source = load_pipeline(pipeline)[0].source if pipeline else SamplesSource(kind="samples")
    texts = list(collection_texts(load_collection(), source))
    return train_tokenizer(texts, out, vocab_size=vocab_size), len(texts)
