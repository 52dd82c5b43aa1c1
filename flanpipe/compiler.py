"""`flanpipe compile`: check inputs, run the Beam job, then write manifests (last) after the leakage check."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa

from flanpipe import __version__, manifest, storage
from flanpipe.beam import failures
from flanpipe.beam.job import MIXTURES_FILE, build
from flanpipe.beam.runner import describe_job, run_job
from flanpipe.collection import TEMPLATES_DIR
from flanpipe.decontaminate import eval_ngrams, index_of
from flanpipe.errors import OutputError
from flanpipe.files import LOCK_NAME, checksums, read_json, sha256_file, write_bytes
from flanpipe.jobs import DatasetJob, JobContext, RenderSettings, mixtures_of
from flanpipe.manifest import FORMAT, MANIFEST, SplitManifest, SubMixtureInfo, TopManifest
from flanpipe.plan import Plan, SplitPlan, load_plan
from flanpipe.progress import Snapshot, Watcher
from flanpipe.read import eval_chunks_in_memory
from flanpipe.render import EVAL_SCHEMA, render_eval
from flanpipe.schema import RecordLayout
from flanpipe.sources import source_fingerprint
from flanpipe.spec import ExamplesSize
from flanpipe.submixtures import any_formats
from flanpipe.tfds_export import tfds_name, write_tfds_metadata
from flanpipe.tokenizer import Tokenizer
from flanpipe.verify import datasets_in_split, leakage
from flanpipe.write import STATS_DIR, shard_name

IN_PROGRESS = ".in_progress.json"
DEFAULT_CACHE = Path.home() / ".cache" / "flanpipe"


@dataclass(frozen=True)
class CompileResult:
    manifest: dict[str, Any]
    cache_misses: list[str]  # datasets read and rendered by this compile (the rest came from the cache)


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
    table_cache_mb: int = 256  # per worker: rendered rows kept while packing


def dataset_jobs(plan: Plan, tokenizer: Tokenizer, cache_dir: str) -> dict[str, DatasetJob]:
    """One picklable job per dataset the plan trains on or evaluates."""
    evaluated = {d for s in plan.splits for d in s.eval}
    trained = {d for s in plan.splits for d in s.train}
    jobs = {}
    for name in plan.datasets:
        spec = plan.collection.datasets[name]
        jobs[name] = DatasetJob(
            spec=spec, cluster_title=plan.collection.cluster_title(name),
            spec_sha256=sha256_file(plan.collection.paths[name]), source=plan.source,
            source_fingerprint=source_fingerprint(spec, plan.source),
            settings=RenderSettings.of(plan.pipeline_of(name)),  # its sub-mixture's settings, with mixture_of
            tokenizer=tokenizer, cache_dir=storage.resolve(cache_dir),
            eval_splits=("validation", "test") if name in evaluated else (),
            trained=name in trained or (plan.pipeline.prompt_tuning_sets and name in evaluated),
            marks=plan.collection.marks[name])
    return jobs


def decontaminated(plan: Plan, jobs: dict[str, DatasetJob]) -> dict[str, DatasetJob]:
    """The jobs, each one that reads train examples given the eval n-grams it is cleaned against
    (``decontaminate``; unchanged without it). The eval sets are read and rendered here, as the job
    renders them, so the index holds exactly the n-grams the audit will look for.
    """
    setting = plan.pipeline.decontaminate
    if setting is None:
        return jobs
    evals = sorted({d for s in plan.splits for d in s.eval})
    ngrams = {}
    for name in evals:
        job = jobs[name]
        tables = [render_eval(job.compiled, split, chunk, job.settings) for split in ("validation", "test")
                  if split in job.splits for chunk in eval_chunks_in_memory(job, split)]
        table = pa.concat_tables(tables) if tables else EVAL_SCHEMA.empty_table()
        ngrams[name] = eval_ngrams(name, table, setting.ngram)
    out = {}
    for name, job in jobs.items():
        if "train" not in job.splits:
            out[name] = job
            continue
        against = evals if setting.against == "all_eval" else sorted(
            {d for s in plan.splits if name in s.train for d in s.eval})
        out[name] = replace(job, decontaminate=index_of(setting.ngram, {d: ngrams[d] for d in against}))
    return out


def pipeline_hash(plan: Plan, tokenizer: Tokenizer, jobs: dict[str, DatasetJob]) -> str:
    """Hash of the resolved pipeline, the tokenizer and every dataset's content key."""
    blob = json.dumps({"pipeline": plan.pipeline.model_dump(mode="json"), "tokenizer": tokenizer.identity,
                       "datasets": {n: j.key for n, j in sorted(jobs.items())},
                       "splits": [s.name for s in plan.splits],
                       # only with mixture_of, so that other pipelines keep their hash
                       **({"submixtures": _submixtures(plan)} if plan.submixtures else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _submixtures(plan: Plan) -> dict[str, dict[str, Any]]:
    """Each sub-mixture's file, weight and resolved pipeline, for the hash and the top manifest."""
    return {s.name: {"file": s.path.name, "weight": s.weight, "resolved": s.pipeline.model_dump(mode="json")}
            for s in plan.submixtures}


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
    tokenizer = Tokenizer.from_file(plan.tokenizer, plan.tokenizer_options)
    jobs = decontaminated(plan, dataset_jobs(plan, tokenizer, options.cache_dir))
    ctx = _context(plan, storage.resolve(options.out), jobs, options, tokenizer)
    return describe_job(lambda p: build(p, ctx), options.runner, beam_args=options.beam_args)


def run_compile(pipeline: str | Path, options: CompileOptions, progress: Callable[[str], None] = lambda msg: None,
                watch: Callable[[Snapshot], None] | None = None) -> CompileResult:
    """Compile a pipeline into ``options.out``; returns the top-level manifest and the cache misses.

    ``progress`` receives one-line messages; ``watch``, when given, a snapshot of the job's
    committed work about once a second while it runs.

    Raises:
      CompileError: bad pipeline, tokenizer, source or output directory (before the job starts),
        or a leakage violation found in the written output (then no manifest is written).
    """
    plan = load_plan(pipeline, templates=options.templates, only=list(options.splits) or None)
    tok_path = plan.tokenizer
    tokenizer = Tokenizer.from_file(tok_path, plan.tokenizer_options)
    out = storage.resolve(options.out)
    _check_out_dir(out, plan.pipeline.name, options.overwrite)
    jobs = decontaminated(plan, dataset_jobs(plan, tokenizer, options.cache_dir))
    digest = pipeline_hash(plan, tokenizer, jobs)
    resolved = {"name": plan.pipeline.name, "hash": digest, "resolved": plan.pipeline.model_dump(mode="json"),
                "file": plan.pipeline_path.name}
    storage.makedirs(out)
    with _exclusive(out):
        storage.remove(storage.join(out, MANIFEST))  # the output is about to change: it must not look complete
        for split in plan.splits:  # stale files of an interrupted or earlier compile
            storage.remove_tree(storage.join(out, split.name))
        write_bytes(storage.join(out, IN_PROGRESS), json.dumps({"pipeline": resolved}).encode())
        # Read before the job, not from Beam metrics: not every runner reports metrics (DaskRunner does not).
        misses = sorted(n for n, j in jobs.items() if not all(storage.exists(j.entry.read_meta(s)) for s in j.splits))
        ctx = _context(plan, out, jobs, options, tokenizer)
        progress(f"running the Beam job ({options.runner}, {len(jobs)} datasets, {len(plan.splits)} splits, "
                 f"{len(ctx.mixtures)} distinct train mixtures)")
        failures.clear(out)
        try:
            with Watcher(ctx, watch) if watch else _nothing(), _tokenizer_threads(tokenizer, options.workers):
                run_job(lambda p: build(p, ctx), options.runner, workers=options.workers, mode=options.mode,
                        beam_args=options.beam_args, dask_address=options.dask_address)
        except Exception as e:  # the first worker error in one line, whatever shape the runner gave it
            error = failures.job_failure(out, e)
            failures.clear(out)
            raise error from e
        failures.clear(out)  # errors of bundles the runner retried successfully
        progress("checking the output and writing manifests")
        top = _finish(plan, ctx, tokenizer, tok_path, resolved)
        storage.remove(storage.join(out, IN_PROGRESS))
        return CompileResult(manifest.as_data(top), misses)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _tokenizer_threads(tokenizer: Tokenizer, workers: int) -> Iterator[None]:
    """With several worker processes, each encodes tokenizer.json batches on one thread (the processes already
    share the cores), unless TOKENIZERS_PARALLELISM is set: workers inherit the driver's environment."""
    if tokenizer.kind != "tokenizer.json" or workers <= 1 or "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        del os.environ["TOKENIZERS_PARALLELISM"]


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


def _context(plan: Plan, out: str, jobs: dict[str, DatasetJob], options: CompileOptions, tokenizer: Tokenizer
             ) -> JobContext:
    p = plan.pipeline
    size = p.mixture_size
    return JobContext(
        out_dir=out, datasets=jobs, splits=plan.splits, mixtures=mixtures_of(plan.splits),
        layout=RecordLayout(p.layout, p.lengths.inputs, p.lengths.targets), seed=p.seed, shards=p.output.shards,
        window=p.packing.window, packing=p.packing.enabled, algorithm=p.packing.algorithm, truncate=p.truncate,
        maximum_rate=p.mixing.maximum_rate,
        mixture_examples=size.examples if isinstance(size, ExamplesSize) else None,
        mixture_tokens=None if isinstance(size, ExamplesSize) else size.steps * size.batch_tokens,
        special=tokenizer.special,
        prompt_tuning_sets=p.prompt_tuning_sets, table_cache_bytes=options.table_cache_mb << 20,
        formats=any_formats(p, plan.submixtures))


def _finish(plan: Plan, ctx: JobContext, tokenizer: Tokenizer, tok_path: Path, resolved: dict[str, Any]
            ) -> TopManifest:
    """Check what the job wrote, then write every split manifest and the top manifest (last)."""
    out = ctx.out_dir
    mixes = read_json(storage.join(out, MIXTURES_FILE))
    computed_in = {s: m.name for m in ctx.mixtures for s in (m.name, *m.aliases)}
    metas = {n: {s: read_json(j.entry.read_meta(s)) for s in j.splits} for n, j in ctx.datasets.items()}
    reads = {n: {s: m["counts"] for s, m in ms.items()} for n, ms in metas.items()}
    tok_digest = write_bytes(storage.join(out, tokenizer.file_name), tokenizer.model_proto)
    known = {tokenizer.file_name: tok_digest}
    split_manifests = {}
    for split in ctx.splits:
        m, digests = _finish_split(plan, ctx, split, mixes[computed_in[split.name]], computed_in[split.name],
                                   tokenizer, reads)
        split_manifests[split.name] = m
        known.update({f"{split.name}/{rel}": d for rel, d in digests.items()})
    storage.remove(storage.join(out, MIXTURES_FILE))
    top = TopManifest(
        format=FORMAT, pipeline=resolved,
        tokenizer=manifest.tokenizer_info(tokenizer, tok_path.name),
        versions=_versions(), splits=[s.name for s in ctx.splits],
        datasets={n: {"cache_key": j.key, "cluster": j.spec.cluster, "read": reads[n],
                      "bad_examples": {s: m["bad"] for s, m in metas[n].items() if m.get("bad")}}
                  for n, j in sorted(ctx.datasets.items())},
        summary={n: m.summary for n, m in split_manifests.items()},
        files=checksums(out, exclude=[MANIFEST, IN_PROGRESS], known=known),
        submixtures=_submixtures(plan) if plan.submixtures else None,
        decontamination=_decontamination(plan, metas),
    )
    manifest.write(storage.join(out, MANIFEST), top)
    return top


def _finish_split(plan: Plan, ctx: JobContext, split: SplitPlan, mix: dict[str, Any], computed_in: str,
                  tokenizer: Tokenizer, reads: dict[str, dict[str, dict[str, int]]]
                  ) -> tuple[SplitManifest, dict[str, str]]:
    base = storage.join(ctx.out_dir, split.name)
    files = storage.list_files(base)
    names = {shard_name(k, ctx.shards) for k in range(ctx.shards)}
    expected = [f"{STATS_DIR}/{n}.json" for n in sorted(names)] + [f"{STATS_DIR}/eval-{d}.json" for d in split.eval]
    missing = [f for f in expected if f not in files]
    if missing:  # a runner that silently skipped work must not yield a complete-looking output
        raise OutputError(f"{base}: the Beam job finished without writing {', '.join(missing)}; no manifest written")
    shards = sorted((read_json(storage.join(base, f"{STATS_DIR}/{n}.json")) for n in names), key=lambda s: s["shard"])
    digests: dict[str, str] = {}
    for s in shards:
        digests.update(s["files"])
    for d in split.eval:
        digests.update(read_json(storage.join(base, f"{STATS_DIR}/eval-{d}.json"))["files"])
    clusters = {d: s.cluster for d, s in plan.collection.datasets.items()}
    leaked = leakage(clusters, split.removed, datasets_in_split(base))
    if leaked:
        raise OutputError(f"{base}: leakage: train shards contain {', '.join(leaked)} from removed clusters "
                          f"{', '.join(split.removed)}; no manifest written")
    storage.remove_tree(storage.join(base, STATS_DIR))
    layout = ctx.layout
    write_tfds_metadata(base, layout, shard_lengths=[s["rows"] for s in shards],
                        name=tfds_name(plan.pipeline.name, split.name))
    summary = manifest.summarize(shards, layout)
    tally = manifest.counts(shards, clusters)
    total = summary.examples
    files = storage.list_files(base)
    m = SplitManifest(
        format=FORMAT, split=split.name, layout=layout.layout,
        lengths={"inputs": layout.inputs_length, "targets": layout.targets_length},
        vocab_size=tokenizer.vocab_size, pad_id=tokenizer.special.pad, eos_id=tokenizer.special.eos,
        bos_id=tokenizer.special.bos, removed_clusters=list(split.removed),
        train={"shards": [f for f in files if f.startswith("train/") and f.endswith(".array_record")],
               "rows": summary.rows, "computed_in": computed_in},
        eval={d: {"file": f"eval/{d}.parquet", "kind": plan.collection.datasets[d].kind, "metric": _metric(plan, d)}
              for d in split.eval},
        fewshot_eval={d: {"file": f"fewshot_eval/{d}.parquet", "kind": plan.collection.datasets[d].kind,
                          "metric": _metric(plan, d)} for d in split.eval if f"fewshot_eval/{d}.parquet" in files},
        prompt_tuning={d: {"file": f"prompt_tuning/{d}.parquet"} for d in split.eval
                       if f"prompt_tuning/{d}.parquet" in files},
        summary=summary, counts=tally,
        train_examples_available={d: reads[d]["train"]["kept"] for d in split.train if "train" in reads[d]},
        planned_rates=mix["rates"], planned_examples=mix["uses"],
        realized_rates={d: tally.datasets.get(d, 0) / total for d in split.train} if total else {},
        files=checksums(base, exclude=[MANIFEST], known=digests),
        submixtures=_submixture_shares(plan, split, mix, tally.datasets, total) if split.submixtures else None,
    )
    digests[MANIFEST] = manifest.write(storage.join(base, MANIFEST), m)
    return m, digests


def _decontamination(plan: Plan, metas: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The decontaminate setting and, per train dataset, the eval sets it was cleaned against and what it lost."""
    setting = plan.pipeline.decontaminate
    if setting is None:
        return None
    datasets = {n: m["train"]["decontaminated"] for n, m in sorted(metas.items())
                if "decontaminated" in m.get("train", {})}
    return {"ngram": setting.ngram, "against": setting.against, "dropped": sum(d["dropped"] for d in datasets.values()),
            "datasets": datasets}


def _submixture_shares(plan: Plan, split: SplitPlan, mix: dict[str, Any], realized: dict[str, int], total: int
                       ) -> dict[str, SubMixtureInfo]:
    """Each sub-mixture of a split: settings, datasets, planned share (of the computed mixture) and realized."""
    subs = {s.name: s for s in plan.submixtures}
    out = {}
    for g in split.submixtures:
        sub = subs[g.name]
        examples = sum(realized.get(d, 0) for d in g.train)
        out[g.name] = SubMixtureInfo(
            file=sub.path.name, weight=sub.weight, cap=sub.pipeline.mixing.cap, maximum_rate=g.maximum_rate,
            datasets=list(g.train), planned_share=sum(mix["rates"].get(d, 0.0) for d in g.train),
            examples=examples, realized_share=examples / total if total else 0.0)
    return out


def _metric(plan: Plan, dataset: str) -> str:
    spec = plan.collection.datasets[dataset]
    if spec.kind == "classification":
        return "accuracy"
    return "bleu" if spec.cluster == "translation" else "rouge"


def _versions() -> dict[str, str]:
    out = {"flanpipe": __version__, "python": sys.version.split()[0]}
    for pkg in ("apache-beam", "array-record", "pyarrow", "sentencepiece", "tokenizers", "jinja2", "pydantic",
                "tensorflow-datasets", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
