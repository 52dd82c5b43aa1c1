"""The collection: the taxonomy plus every dataset file, loaded and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flanpipe.errors import CompileError, SpecError, did_you_mean
from flanpipe.paths import TEMPLATES_DIR
from flanpipe.spec import DatasetSpec, Taxonomy, TemplateLimits, load_dataset_file, load_taxonomy
from flanpipe.templates import CompiledDataset
from flanpipe.yamlio import Located

TAXONOMY_FILE = "taxonomy.yaml"


@dataclass(frozen=True)
class Collection:
    """Everything under templates/: the taxonomy and each dataset's spec and file path."""

    root: Path
    taxonomy: Taxonomy
    datasets: dict[str, DatasetSpec]
    paths: dict[str, Path]
    marks: dict[str, Located]  # each dataset file's line marks (no data), so errors name file:line

    def compiled(self, name: str, limits: TemplateLimits | None = None) -> CompiledDataset:
        """The dataset's compiled templates (checked when the collection was loaded)."""
        return CompiledDataset(self.datasets[name], self.marks[name], cluster_title=self.cluster_title(name),
                               check=False, limits=limits)

    def cluster_title(self, dataset: str) -> str:
        return self.taxonomy.clusters[self.datasets[dataset].cluster].title


def dataset_files(root: Path) -> list[Path]:
    """Every dataset YAML under ``root`` (one level of cluster folders), sorted."""
    return sorted(p for p in root.glob("*/*.yaml"))


def load_collection(root: str | Path = TEMPLATES_DIR, *, errors: list[CompileError] | None = None) -> Collection:
    """Load and cross-check the collection.

    Args:
      root: the templates directory.
      errors: when given, problems are appended here and loading goes on (for ``validate``);
        otherwise the first problem is raised.
    """
    root = Path(root)

    def report(error: CompileError) -> None:
        if errors is None:
            raise error
        errors.append(error)

    taxonomy, tax_located = load_taxonomy(root / TAXONOMY_FILE)
    datasets: dict[str, DatasetSpec] = {}
    paths: dict[str, Path] = {}
    marks: dict[str, Located] = {}
    for path in dataset_files(root):
        try:
            spec, located = load_dataset_file(path)
            CompiledDataset(spec, located)
        except CompileError as e:
            report(e)
            continue
        if spec.name in datasets:
            report(SpecError(path, located.where(("name",))[1], "name",
                             f"dataset {spec.name!r} is also defined in {paths[spec.name]}"))
            continue
        if path.parent.name != spec.cluster:
            report(SpecError(path, located.where(("cluster",))[1], "cluster",
                             f"file lives in folder {path.parent.name!r} but names cluster {spec.cluster!r}"))
        datasets[spec.name] = spec
        paths[spec.name] = path
        marks[spec.name] = located.marks()
    for error in _cross_check(taxonomy, tax_located, datasets, paths):
        report(error)
    return Collection(root, taxonomy, datasets, paths, marks)


def _cross_check(taxonomy: Taxonomy, located: Located, datasets: dict[str, DatasetSpec],
                 paths: dict[str, Path]) -> list[CompileError]:
    problems: list[CompileError] = []
    listed: dict[str, str] = {}
    for cname, cluster in taxonomy.clusters.items():
        for key in ("datasets", "eval_only"):
            for i, dname in enumerate(getattr(cluster, key)):
                file, line = located.where(("clusters", cname, key, i))
                field = f"clusters.{cname}.{key}[{i}]"
                if dname in listed:
                    problems.append(SpecError(file, line, field, f"dataset {dname!r} is already listed in "
                                                                  f"cluster {listed[dname]!r}"))
                elif dname not in datasets:
                    problems.append(SpecError(file, line, field, f"unknown dataset {dname!r}"
                                                                  f"{did_you_mean(dname, datasets)}"))
                elif datasets[dname].cluster != cname:
                    problems.append(SpecError(file, line, field, f"dataset {dname!r} declares cluster "
                                                                  f"{datasets[dname].cluster!r}"))
                listed[dname] = cname
        for i, other in enumerate(cluster.also_remove):
            if other not in taxonomy.clusters:
                file, line = located.where(("clusters", cname, "also_remove", i))
                problems.append(SpecError(file, line, f"clusters.{cname}.also_remove[{i}]",
                                          f"unknown cluster {other!r}{did_you_mean(other, taxonomy.clusters)}"))
    for dname, spec in datasets.items():
        if dname not in listed:
            problems.append(SpecError(paths[dname], None, "name",
                                      f"dataset {dname!r} is not listed in any cluster of {TAXONOMY_FILE}"))
    return problems
