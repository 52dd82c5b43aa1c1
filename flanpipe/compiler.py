"""`flanpipe compile`: check inputs, run the Beam job, then write manifests (last) after the leakage check."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from flanpipe import __version__
from flanpipe.beam.job import build
from flanpipe.beam.runner import describe_job, run_job
from flanpipe import cache, storage
from flanpipe.cache import DatasetJob
from flanpipe.collection import TEMPLATES_DIR
from flanpipe.errors import OutputError
from flanpipe.mixing import mixing_rates
from flanpipe.plan import Plan, SplitPlan, load_plan
from flanpipe.prepare import RenderSettings
from flanpipe.schema import RecordLayout
from flanpipe.shards import STATS_DIR, JobContext, shard_name
from flanpipe.sources import source_fingerprint
from flanpipe.spec import ExamplesSize
from flanpipe.tfds_export import tfds_name, write_tfds_metadata
from flanpipe.tokenizer import Tokenizer
from flanpipe.verify import datasets_in_split, leakage
from flanpipe.writers import LOCK_NAME, checksums, read_json, sha256_file, write_bytes, write_json

FORMAT = "flanpipe/1"
IN_PROGRESS = ".in_progress.json"
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_CACHE = Path.home() / ".cache" / "flanpipe"


@dataclass(frozen=True)
class CompileResult:
    manifest: dict[str, Any]
    cache_misses: list[str]  # datasets rendered + tokenized by this compile (the rest came from the cache)


@dataclass(frozen=True)
class CompileOptions:
    out: str  # a local path or any fsspec URL (gs://, memory://, ...)
    runner: str = "direct"
    workers: int = 1
    mode: str | None = None
    splits: tuple[str, ...] = ()
    cache_dir: str = str(DEFAULT_CACHE)
    overwrite: bool = False
    templates: Path = TEMPLATES_DIR
    beam_args: tuple[str, ...] = ()
    dask_address: str | None = None


def tokenizer_path(plan: Plan) -> Path:
    path = Path(plan.pipeline.tokenizer)
    return path if path.is_absolute() else (plan.pipeline_path.parent / path).resolve()


def dataset_jobs(plan: Plan, tokenizer: Tokenizer, cache_dir: str) -> dict[str, DatasetJob]:
    """One picklable preparation job per dataset the plan trains on or evaluates."""
    settings = RenderSettings.of(plan.pipeline)
    evaluated = {d for s in plan.splits for d in s.eval}
    jobs = {}
    for name in plan.datasets:
        spec = plan.collection.datasets[name]
        jobs[name] = DatasetJob(
            spec=spec, cluster_title=plan.collection.cluster_title(name),
            spec_sha256=sha256_file(plan.collection.paths[name]), source=plan.pipeline.source,
            source_fingerprint=source_fingerprint(spec, plan.pipeline.source), settings=settings,
            tokenizer=tokenizer, cache_dir=storage.resolve(cache_dir),
            eval_splits=("validation", "test") if name in evaluated else ())
    return jobs


def pipeline_hash(plan: Plan, tokenizer: Tokenizer, jobs: dict[str, DatasetJob]) -> str:
    """Hash of the resolved pipeline, the tokenizer and every dataset's content key."""
    blob = json.dumps({"pipeline": plan.pipeline.model_dump(mode="json"), "tokenizer": tokenizer.sha256,
                       "datasets": {n: j.key for n, j in sorted(jobs.items())},
                       "splits": [s.name for s in plan.splits]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_out_dir(out: str, name: str, overwrite: bool) -> None:
    markers = [storage.join(out, m) for m in (MANIFEST, IN_PROGRESS)]
    for path in markers:
        if storage.exists(path):
            try:
                owner = read_json(path).get("pipeline", {}).get("name")
            except (json.JSONDecodeError, AttributeError):
                owner = "<unreadable>"
            if owner != name and not overwrite:
                raise OutputError(f"{out}: holds the output of pipeline {owner!r}, not {name!r}; "
                                  f"choose another --out or pass --overwrite")
    others = [f for f in storage.list_files(out) if f != LOCK_NAME]
    if not any(storage.exists(m) for m in markers) and others and not overwrite:
        raise OutputError(f"{out}: exists and is not a flanpipe output directory; choose another --out or "
                          f"pass --overwrite")


def describe_compile(pipeline: str | Path, options: CompileOptions) -> list[str]:
    """The Beam stages a compile would run on ``options.runner`` (with its options), without running it.

    Checks the same inputs as a real compile (pipeline, tokenizer, sources) but writes nothing.
    """
    plan = load_plan(pipeline, templates=options.templates, only=list(options.splits) or None)
    tokenizer = Tokenizer.from_file(tokenizer_path(plan))
    jobs = dataset_jobs(plan, tokenizer, options.cache_dir)
    ctx = _context(plan, storage.resolve(options.out), jobs)
    return describe_job(lambda p: build(p, ctx), options.runner, beam_args=options.beam_args)


def run_compile(pipeline: str | Path, options: CompileOptions,
                progress: Callable[[str], None] = lambda msg: None) -> CompileResult:
    """Compile a pipeline into ``options.out``; returns the top-level manifest and the cache misses.

    Raises:
      CompileError: bad pipeline, tokenizer, source or output directory (before the job starts),
        or a leakage violation found in the written output (then no manifest is written).
    """
    plan = load_plan(pipeline, templates=options.templates, only=list(options.splits) or None)
    tok_path = tokenizer_path(plan)
    tokenizer = Tokenizer.from_file(tok_path)
    out = storage.resolve(options.out)
    _check_out_dir(out, plan.pipeline.name, options.overwrite)
    jobs = dataset_jobs(plan, tokenizer, options.cache_dir)
    digest = pipeline_hash(plan, tokenizer, jobs)
    resolved = {"name": plan.pipeline.name, "hash": digest, "resolved": plan.pipeline.model_dump(mode="json"),
                "file": plan.pipeline_path.name}
    storage.makedirs(out)
    with _exclusive(out):
        storage.remove(storage.join(out, MANIFEST))  # the output is about to change: it must not look complete
        for split in plan.splits:  # stale files of an interrupted or earlier compile
            storage.remove_tree(storage.join(out, split.name))
        write_json(storage.join(out, IN_PROGRESS), {"pipeline": resolved})
        # Read before the job, not from Beam metrics: not every runner reports metrics (DaskRunner does not).
        misses = sorted(n for n, j in jobs.items() if not storage.exists(j.file("meta.json")))
        ctx = _context(plan, out, jobs)
        progress(f"running the Beam job ({options.runner}, {len(jobs)} datasets, {len(plan.splits)} splits)")
        run_job(lambda p: build(p, ctx), options.runner, workers=options.workers, mode=options.mode,
                beam_args=options.beam_args, dask_address=options.dask_address)
        progress("writing manifests")
        write_bytes(storage.join(out, TOKENIZER_FILE), tokenizer.model_proto)
        kept = {n: cache.prepare(j)["counts"]["kept"] for n, j in jobs.items()}  # cache hits: reads meta.json
        split_manifests = {s.name: _finish_split(out, s, plan, tokenizer, kept) for s in ctx.splits}
        manifest = {
            "format": FORMAT, "pipeline": resolved,
            "tokenizer": {"file": TOKENIZER_FILE, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                          "source": tok_path.name},
            "versions": _versions(), "splits": [s.name for s in ctx.splits],
            "datasets": {n: {"cache_key": j.key, "cluster": j.spec.cluster} for n, j in sorted(jobs.items())},
            "summary": {n: m["summary"] for n, m in split_manifests.items()},
            "files": checksums(out, exclude=[MANIFEST, IN_PROGRESS]),
        }
        write_json(storage.join(out, MANIFEST), manifest)
        storage.remove(storage.join(out, IN_PROGRESS))
        return CompileResult(manifest, misses)


@contextmanager
def _exclusive(out: str) -> Iterator[None]:
    """Hold an exclusive lock on a local output directory for the whole compile.

    Two compiles writing one directory would delete each other's files; the second one is
    refused instead. (Object stores have no such lock: give each compile its own --out.)
    """
    if not storage.is_local(out):
        yield
        return
    path = os.path.join(storage.filesystem(out)[1], LOCK_NAME)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{out}: another flanpipe compile is writing this directory") from None
        try:
            yield
        finally:
            os.unlink(path)
            fcntl.flock(f, fcntl.LOCK_UN)


def _context(plan: Plan, out: str, jobs: dict[str, DatasetJob]) -> JobContext:
    p = plan.pipeline
    size = p.mixture_size
    return JobContext(
        out_dir=out, datasets=jobs,
        splits=plan.splits,
        layout=RecordLayout(p.layout, p.lengths.inputs, p.lengths.targets), seed=p.seed, shards=p.output.shards,
        window=p.packing.window, packing=p.packing.enabled, algorithm=p.packing.algorithm, truncate=p.truncate,
        maximum_rate=p.mixing.maximum_rate,
        mixture_examples=size.examples if isinstance(size, ExamplesSize) else None,
        mixture_tokens=None if isinstance(size, ExamplesSize) else size.steps * size.batch_tokens,
        prompt_tuning_sets=p.prompt_tuning_sets)


def _finish_split(out: str, split: SplitPlan, plan: Plan, tokenizer: Tokenizer, kept: dict[str, int]
                  ) -> dict[str, Any]:
    base = storage.join(out, split.name)
    files = storage.list_files(base)
    stats = [read_json(storage.join(base, f)) for f in files if f.startswith(STATS_DIR + "/")]
    expected = {f"{STATS_DIR}/{shard_name(k, plan.pipeline.output.shards)}.json"
                for k in range(plan.pipeline.output.shards)}
    missing = sorted(expected - set(files)) + sorted(f"eval/{d}.parquet" for d in split.eval
                                                     if f"eval/{d}.parquet" not in files)
    if missing:  # a runner that silently skipped work must not yield a complete-looking output
        raise OutputError(f"{base}: the Beam job finished without writing {', '.join(missing)}; "
                          f"no manifest written")
    clusters = {d: s.cluster for d, s in plan.collection.datasets.items()}
    leaked = leakage(clusters, split.removed, datasets_in_split(base))
    if leaked:
        raise OutputError(f"{base}: leakage: train shards contain {', '.join(leaked)} from removed clusters "
                          f"{', '.join(split.removed)}; no manifest written")
    datasets: Counter[str] = Counter()
    templates: Counter[str] = Counter()
    for s in stats:
        datasets.update(s["datasets"])
        templates.update(s["templates"])
    rows = sum(s["rows"] for s in stats)
    tokens = sum(s["tokens"] for s in stats)
    layout = RecordLayout(plan.pipeline.layout, plan.pipeline.lengths.inputs, plan.pipeline.lengths.targets)
    per_cluster: Counter[str] = Counter()
    for d, n in datasets.items():
        per_cluster[clusters[d]] += n
    total = sum(datasets.values())
    planned = mixing_rates({d: kept[d] for d in split.train}, plan.pipeline.mixing.maximum_rate)
    summary = {"examples": total, "rows": rows, "tokens": tokens,
               "packing_efficiency": tokens / (rows * layout.sequence_length) if rows else 0.0,
               "input_truncated": sum(s["input_truncated"] for s in stats),
               "target_truncated": sum(s["target_truncated"] for s in stats),
               "turned": sum(s["turned"] for s in stats)}
    storage.remove_tree(storage.join(base, STATS_DIR))
    write_tfds_metadata(base, layout, shard_lengths=[s["rows"] for s in sorted(stats, key=lambda s: s["shard"])],
                        name=tfds_name(plan.pipeline.name, split.name))
    manifest = {
        "format": FORMAT, "split": split.name, "layout": plan.pipeline.layout,
        "lengths": {"inputs": layout.inputs_length, "targets": layout.targets_length},
        "vocab_size": tokenizer.vocab_size, "pad_id": 0, "eos_id": 1, "removed_clusters": list(split.removed),
        "train": {"shards": [f for f in files if f.startswith("train/") and f.endswith(".array_record")],
                  "rows": rows},
        "eval": {d: {"file": f"eval/{d}.parquet", "kind": plan.collection.datasets[d].kind,
                     "metric": _metric(plan, d)} for d in split.eval},
        "fewshot_eval": {d: {"file": f"fewshot_eval/{d}.parquet", "kind": plan.collection.datasets[d].kind,
                             "metric": _metric(plan, d)} for d in split.eval
                         if f"fewshot_eval/{d}.parquet" in files},
        "prompt_tuning": {d: {"file": f"prompt_tuning/{d}.parquet"} for d in split.eval
                          if f"prompt_tuning/{d}.parquet" in files},
        "summary": summary,
        "counts": {"clusters": dict(sorted(per_cluster.items())), "datasets": dict(sorted(datasets.items())),
                   "templates": dict(sorted(templates.items()))},
        "train_examples_available": {d: kept[d] for d in split.train},
        "planned_rates": planned,
        "realized_rates": {d: datasets.get(d, 0) / total for d in split.train} if total else {},
        "files": checksums(base, exclude=[MANIFEST]),
    }
    write_json(storage.join(base, MANIFEST), manifest)
    return manifest


def _metric(plan: Plan, dataset: str) -> str:
    spec = plan.collection.datasets[dataset]
    if spec.kind == "classification":
        return "accuracy"
    return "bleu" if spec.cluster == "translation" else "rouge"


def _versions() -> dict[str, str]:
    out = {"flanpipe": __version__, "python": sys.version.split()[0]}
    for pkg in ("apache-beam", "array-record", "pyarrow", "sentencepiece", "jinja2", "pydantic",
                "tensorflow-datasets", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
