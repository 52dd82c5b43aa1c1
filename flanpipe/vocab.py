"""Training the default SentencePiece model from the rendered collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from flanpipe.collection import TEMPLATES_DIR, Collection, load_collection
from flanpipe.plan import resolved_source
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


def train_from_collection(out: Path, *, vocab_size: int, pipeline: Path | None = None,
                          templates: Path = TEMPLATES_DIR) -> tuple[Path, int]:
    """Train a tokenizer on the collection rendered from the pipeline's source (default: the collection's
    samples)."""
    collection = load_collection(templates)
    if pipeline:
        spec, located = load_pipeline(pipeline)
        source = resolved_source(spec, located, collection)
    else:
        source = SamplesSource(kind="samples", dir=str(collection.root.resolve() / "samples"))
    texts = list(collection_texts(collection, source))
    return train_tokenizer(texts, out, vocab_size=vocab_size), len(texts)
