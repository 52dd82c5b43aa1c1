"""Sub-mixtures: a pipeline's ``mixture_of`` -> one effective pipeline per weighted part (outer settings + its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flanpipe.errors import SpecError
from flanpipe.paths import package_path
from flanpipe.spec import PipelineSpec, merge_located, resolve_extends, validate_located
from flanpipe.yamlio import Located

# What only the outer pipeline sets: one seed, source, tokenizer, row layout, packing, size, set of
# held-out splits and output for the whole mixture. A sub-pipeline sets everything else: its datasets
# (datasets / clusters), its mixing (cap, maximum_rate) and its render settings; what it leaves out
# it takes from the outer pipeline.
OUTER_ONLY = ("seed", "source", "tokenizer", "layout", "lengths", "truncate", "packing", "mixture_size",
              "held_out", "include_all", "prompt_tuning_sets", "output", "template_limits", "decontaminate")


@dataclass(frozen=True)
class SubPipeline:
    """One part of a mixture: its name, declared weight, file and effective pipeline."""

    name: str
    weight: float
    path: Path
    pipeline: PipelineSpec  # the outer pipeline's settings overridden by the sub-pipeline's own keys
    located: Located


def load_submixtures(pipeline: PipelineSpec, located: Located) -> tuple[SubPipeline, ...]:
    """Load every sub-pipeline of ``pipeline.mixture_of`` (empty when it has none).

    Raises:
      SpecError: a missing file, a key a sub-pipeline may not set, a nested ``mixture_of``, two parts
        with one name, or a value the merged pipeline rejects (naming the file and line that set it).
    """
    if pipeline.mixture_of is None:
        return ()
    outer = Located({k: v for k, v in located.data.items() if k != "mixture_of"}, located.path, located.lines,
                    located.text_lines)
    subs: list[SubPipeline] = []
    for i, part in enumerate(pipeline.mixture_of):
        file, line = located.where(("mixture_of", i, "pipeline"))
        try:
            bundled = package_path(part.pipeline)
        except ValueError as e:
            raise SpecError(file, line, f"mixture_of[{i}].pipeline", str(e)) from None
        path = (bundled or file.parent / part.pipeline).resolve()
        if not path.exists():
            raise SpecError(file, line, f"mixture_of[{i}].pipeline",
                            f"no such pipeline file {part.pipeline!r} (looked at {path})")
        sub = resolve_extends(path)
        if not isinstance(sub.data, dict):
            raise SpecError(path, 1, None, "a pipeline file must be a mapping")
        for key in sub.data:
            if key == "mixture_of":
                sub_file, sub_line = sub.where((key,))
                raise SpecError(sub_file, sub_line, key, f"a sub-pipeline (mixture_of[{i}] of {located.path.name}) "
                                                         f"cannot be a mixture itself: one level of mixture_of only")
            if key in OUTER_ONLY:
                sub_file, sub_line = sub.where((key,))
                raise SpecError(sub_file, sub_line, key, f"set by the outer pipeline {located.path.name} for the "
                                                         f"whole mixture; a sub-pipeline sets its datasets, "
                                                         f"clusters, mixing and render settings only")
        name = sub.data.get("name") if isinstance(sub.data.get("name"), str) else path.stem
        merged = merge_located(outer, sub)
        merged.data["name"] = name
        effective = validate_located(PipelineSpec, merged)
        if any(s.name == name for s in subs):
            raise SpecError(file, line, f"mixture_of[{i}].pipeline", f"two sub-mixtures are named {name!r}; give "
                                                                     f"each sub-pipeline its own name")
        subs.append(SubPipeline(name, part.weight, path, effective, sub))
    with_formats = [s.name for s in subs if s.pipeline.formats is not None]
    if with_formats and len(with_formats) != len(subs):
        file, line = located.where(("mixture_of",))
        raise SpecError(file, line, "mixture_of",
                        f"sub-mixtures {', '.join(with_formats)} set formats and "
                        f"{', '.join(s.name for s in subs if s.name not in with_formats)} do not; the output's "
                        f"'format' column needs one in every part (set formats: in the outer pipeline or in each)")
    return tuple(subs)


def any_formats(pipeline: PipelineSpec, subs: tuple[SubPipeline, ...]) -> bool:
    """Whether uses carry a prompt format: the pipeline sets ``formats``, or (a mixture) its parts do."""
    return pipeline.formats is not None or any(s.pipeline.formats is not None for s in subs)
