"""Plan: pipeline + collection -> which datasets each held-out split trains on and evaluates, and how much."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flanpipe.collection import TEMPLATES_DIR, Collection, load_collection
from flanpipe.errors import SourceError, SpecError, did_you_mean
from flanpipe.mixing import allocate, mixing_rates, submixture_rates
from flanpipe.paths import package_path
from flanpipe.sources import count_examples
from flanpipe.spec import ExamplesSize, PipelineSpec, SamplesSource, TfdsDataSource, TokenizerSpec, load_pipeline
from flanpipe.submixtures import SubPipeline, load_submixtures
from flanpipe.yamlio import Located

ALL_SPLIT = "all"


@dataclass(frozen=True)
class SubShare:
    """One sub-mixture's part of a split's mixture: its declared weight, maximum rate and train datasets."""

    name: str
    weight: float
    maximum_rate: int
    train: tuple[str, ...]


@dataclass(frozen=True)
class SplitPlan:
    """One mixture: a held-out cluster (or 'all'), what is removed, trained and evaluated."""

    name: str
    removed: tuple[str, ...]
    train: tuple[str, ...]
    eval: tuple[str, ...]
    rates: dict[str, float] = field(hash=False)
    # Examples per dataset when the mixture size is given in examples; empty when it is
    # given in steps x tokens (then the compiler sizes it after tokenization).
    allocation: dict[str, int] = field(hash=False)
    # The sub-mixtures with a train dataset in this split (mixture_of); empty: one mixture of ``train``.
    submixtures: tuple[SubShare, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Everything a compile needs, resolved and checked; immutable and picklable."""

    pipeline: PipelineSpec  # as declared (relative paths stay relative: the hash does not depend on where)
    pipeline_path: Path
    collection: Collection
    counts: dict[str, int | None]  # train examples per dataset a split may train on, capped (None: data not there)
    splits: tuple[SplitPlan, ...]
    source: SamplesSource | TfdsDataSource  # the pipeline's source with its directory resolved
    tokenizer: Path  # the tokenizer file, resolved
    tokenizer_options: TokenizerSpec | None = None  # the pipeline's special-id overrides (its dict form)
    submixtures: tuple[SubPipeline, ...] = ()  # mixture_of, loaded (empty: none)
    owners: dict[str, str] = field(default_factory=dict)  # dataset -> the sub-mixture whose settings it takes

    def pipeline_of(self, dataset: str) -> PipelineSpec:
        """The settings a dataset is read and rendered with: its sub-mixture's, or the pipeline's."""
        owner = self.owners.get(dataset)
        return next(s.pipeline for s in self.submixtures if s.name == owner) if owner else self.pipeline

    @property
    def datasets(self) -> list[str]:
        """Every dataset some split trains on or evaluates, sorted."""
        return sorted({d for s in self.splits for d in s.train + s.eval})

    def split(self, name: str) -> SplitPlan:
        return next(s for s in self.splits if s.name == name)


def load_plan(pipeline_path: str | Path, *, templates: str | Path = TEMPLATES_DIR,
              only: list[str] | None = None, require_data: bool = True) -> Plan:
    """Load a pipeline and the collection, check cross-references, and build the plan.

    Args:
      pipeline_path: the pipeline YAML.
      templates: the templates directory.
      only: build only these split names (``--split``); None builds all.
      require_data: False lets a dataset whose data is not there (yet) count as unknown (None), and its
        splits have no rates: the structure of a pipeline, before anything is downloaded.
    """
    pipeline, located, collection, subs = _load_checked(pipeline_path, templates)
    source = resolved_source(pipeline, located, collection)
    groups = {split_name(h): [h] if isinstance(h, str) else list(h) for h in pipeline.held_out}
    held = list(groups) + ([ALL_SPLIT] if pipeline.include_all else [])
    if only:
        for name in only:
            if name not in held:
                raise SpecError(pipeline_path, None, "--split",
                                f"unknown split {name!r}{did_you_mean(name, held)}; this pipeline builds "
                                f"{', '.join(held)}")
        held = [h for h in held if h in only]
    tax = collection.taxonomy
    scope = pipeline_clusters(pipeline, collection, subs)
    parts = subs or (None,)
    universes = {_name(p): _universe(p.pipeline if p else pipeline, collection, scope) for p in parts}
    trained = {_name(p): {d for c in _training_clusters(p.pipeline if p else pipeline, collection)
                          for d in tax.clusters[c].datasets if d in universes[_name(p)]}
               for p in parts}
    owners = _owners(subs, universes, trained, located)
    universe = set().union(*universes.values())
    trainable = set().union(*trained.values())
    counts: dict[str, int | None] = {}
    for d in sorted(universe & trainable):  # only what some split may train on needs its data counted
        if "train" in collection.datasets[d].source.splits:
            cap = (next(s for s in subs if s.name == owners[d]).pipeline if d in owners else pipeline).mixing.cap
            try:
                counts[d] = min(count_examples(collection.datasets[d], "train", source), cap)
            except SourceError:
                if require_data:
                    raise
                counts[d] = None
    splits = []
    for name in held:
        held_clusters = groups.get(name, [])
        removed_set = {c for h in held_clusters for c in tax.removed_with(h)}
        removed = tuple(c for c in tax.clusters if c in removed_set and c in scope)
        shares = []
        for p in parts:
            spec = p.pipeline if p else pipeline
            mine = tuple(d for c in _training_clusters(spec, collection) if c not in removed
                         for d in tax.clusters[c].datasets if d in counts and d in trained[_name(p)])
            if mine:
                shares.append(SubShare(_name(p), p.weight if p else 1.0, spec.mixing.maximum_rate, mine))
        train = tuple(d for s in shares for d in s.train)
        evals = tuple(d for h in held_clusters for d in tax.clusters[h].datasets + tax.clusters[h].eval_only
                      if d in universe)
        if not train:
            raise SpecError(located.path, located.where(("held_out",))[1], "held_out",
                            f"holding out {name!r} leaves no dataset to train on")
        rates: dict[str, float] = {}
        if all(counts[d] is not None for d in train):
            if subs:
                rates = submixture_rates([(s.weight, s.maximum_rate, {d: counts[d] or 0 for d in s.train})
                                          for s in shares])[0]
            else:
                rates = mixing_rates({d: counts[d] or 0 for d in train}, pipeline.mixing.maximum_rate)
        size = pipeline.mixture_size
        allocation = allocate(rates, size.examples) if rates and isinstance(size, ExamplesSize) else {}
        splits.append(SplitPlan(name, removed, train, evals, rates, allocation, tuple(shares) if subs else ()))
    if require_data:  # the eval splits too: a missing split or feature is found here, not inside the job
        for d in sorted({d for s in splits for d in s.eval}):
            for split in ("validation", "test"):
                count_examples(collection.datasets[d], split, source)
    tok = pipeline.tokenizer
    tok_path = (resolve_path(tok, located, ("tokenizer",)) if isinstance(tok, str)
                else resolve_path(tok.path, located, ("tokenizer", "path")))
    return Plan(pipeline, located.path.resolve(), collection, counts, tuple(splits), source, Path(tok_path),
                None if isinstance(tok, str) else tok, subs, owners)


def _name(part: SubPipeline | None) -> str:
    return part.name if part is not None else ""


def _universe(pipeline: PipelineSpec, collection: Collection, scope: list[str]) -> set[str]:
    """The datasets a (sub-)pipeline may train on or evaluate: its datasets: (or all) within the clusters in scope."""
    tax = collection.taxonomy
    in_scope = {d for c in scope for d in tax.clusters[c].datasets + tax.clusters[c].eval_only}
    return (set(pipeline.datasets) if pipeline.datasets is not None else set(collection.datasets)) & in_scope


def _training_clusters(pipeline: PipelineSpec, collection: Collection) -> list[str]:
    """Its clusters: (or the taxonomy's default collection, opt-in clusters left out)."""
    return pipeline.clusters if pipeline.clusters is not None else collection.taxonomy.default_clusters()


def _owners(subs: tuple[SubPipeline, ...], universes: dict[str, set[str]], trained: dict[str, set[str]],
            located: Located) -> dict[str, str]:
    """Dataset -> the sub-mixture that trains on it (or, for one only evaluated, the first that lists it).

    Raises:
      SpecError: a dataset trained by two sub-mixtures.
    """
    owners: dict[str, str] = {}
    for i, sub in enumerate(subs):
        for d in sorted(trained[sub.name]):
            if d in owners:
                file, line = located.where(("mixture_of", i, "pipeline"))
                raise SpecError(file, line, f"mixture_of[{i}].pipeline",
                                f"dataset {d!r} is in sub-mixtures {owners[d]!r} and {sub.name!r}; a dataset "
                                f"belongs to one sub-mixture (restrict each with datasets: or clusters:)")
            owners[d] = sub.name
    for sub in subs:
        for d in sorted(universes[sub.name]):
            owners.setdefault(d, sub.name)
    return owners


def resolve_path(value: str, located: Located, loc: tuple[str | int, ...]) -> str:
    """A path written in a pipeline, resolved against the directory of the file that wrote it (through
    ``extends:``); URLs and absolute paths are kept (``~`` expanded)."""
    if "://" in value:
        return value
    bundled = package_path(value)
    if bundled is not None:
        return str(bundled)
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    return str((located.where(loc)[0].parent / path).resolve())


def resolved_source(pipeline: PipelineSpec, located: Located, collection: Collection
                    ) -> SamplesSource | TfdsDataSource:
    """The pipeline's source with its directory made absolute: samples default to the collection's own
    ``samples/`` (so ``--templates DIR`` reads DIR's samples)."""
    source = pipeline.source
    if isinstance(source, TfdsDataSource):
        return source.model_copy(update={"data_dir": resolve_path(source.data_dir, located, ("source", "data_dir"))})
    if source.dir is None:
        return source.model_copy(update={"dir": str(collection.root.resolve() / "samples")})
    return source.model_copy(update={"dir": resolve_path(source.dir, located, ("source", "dir"))})


def check_pipeline(pipeline_path: str | Path, *, templates: str | Path = TEMPLATES_DIR
                   ) -> tuple[PipelineSpec, Located, Collection]:
    """Load a pipeline and the collection and check every name the pipeline (and its sub-pipelines) use (no data
    is read)."""
    pipeline, located, collection, _ = _load_checked(pipeline_path, templates)
    return pipeline, located, collection


def _load_checked(pipeline_path: str | Path, templates: str | Path
                  ) -> tuple[PipelineSpec, Located, Collection, tuple[SubPipeline, ...]]:
    pipeline, located = load_pipeline(pipeline_path)
    collection = load_collection(templates)
    _check_names(pipeline, located, collection)
    subs = load_submixtures(pipeline, located)
    scope = pipeline_clusters(pipeline, collection, subs)
    for sub in subs:
        _check_selection(sub.pipeline, sub.located, collection, scope)
    return pipeline, located, collection, subs


def pipeline_clusters(pipeline: PipelineSpec, collection: Collection, subs: tuple[SubPipeline, ...] = ()
                      ) -> list[str]:
    """The clusters a pipeline can train on, evaluate or remove, in taxonomy order: every cluster that is not
    ``opt_in``, and opt-in ones the pipeline (or one of its sub-pipelines) names in ``clusters:`` or ``held_out:``."""
    named = set(pipeline.clusters or []) | {c for h in pipeline.held_out for c in ([h] if isinstance(h, str) else h)}
    named |= {c for sub in subs for c in sub.pipeline.clusters or []}
    return [c for c, cluster in collection.taxonomy.clusters.items() if not cluster.opt_in or c in named]


def split_name(held_out: str | list[str]) -> str:
    """A held-out entry's split name: the cluster, or 'a+b+c' for a group."""
    return held_out if isinstance(held_out, str) else "+".join(held_out)


def _check_names(pipeline: PipelineSpec, located: Located, collection: Collection) -> None:
    entries: list[tuple[tuple[str | int, ...], str]] = []
    for i, held in enumerate(pipeline.held_out):
        entries += [(("held_out", i), held)] if isinstance(held, str) else [
            (("held_out", i, j), name) for j, name in enumerate(held)]
    _check_clusters(entries, located, collection)
    _check_selection(pipeline, located, collection, pipeline_clusters(pipeline, collection))
    if len({split_name(h) for h in pipeline.held_out}) != len(pipeline.held_out):
        file, line = located.where(("held_out",))
        raise SpecError(file, line, "held_out", "a cluster is listed twice")


def _check_clusters(entries: list[tuple[tuple[str | int, ...], str]], located: Located, collection: Collection
                    ) -> None:
    clusters = collection.taxonomy.clusters
    for loc, name in entries:
        if name not in clusters:
            file, line = located.where(loc)
            field = loc[0] + "".join(f"[{p}]" for p in loc[1:])
            raise SpecError(file, line, str(field), f"unknown cluster {name!r}{did_you_mean(name, clusters)}")


def _check_selection(pipeline: PipelineSpec, located: Located, collection: Collection, scope: list[str]) -> None:
    """The names in a pipeline's (or a sub-pipeline's) ``clusters:`` and ``datasets:``; ``scope``: the clusters
    the whole pipeline names or trains by default (a dataset of another opt-in cluster is refused)."""
    _check_clusters([(("clusters", i), name) for i, name in enumerate(pipeline.clusters or [])], located, collection)
    for i, name in enumerate(pipeline.datasets or []):
        if name not in collection.datasets:
            file, line = located.where(("datasets", i))
            raise SpecError(file, line, f"datasets[{i}]",
                            f"unknown dataset {name!r}{did_you_mean(name, collection.datasets)}")
        cluster = collection.datasets[name].cluster
        if cluster not in scope:
            file, line = located.where(("datasets", i))
            raise SpecError(file, line, f"datasets[{i}]",
                            f"dataset {name!r} is in the opt-in cluster {cluster!r}, which this pipeline does not "
                            f"name: add {cluster!r} to clusters: (to train on it) or to held_out: (to evaluate it)")
