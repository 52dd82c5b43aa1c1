"""Beam runner selection: the local FnApiRunner (never Prism), Dask, or any runner by name with options."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from flanpipe.errors import CompileError

RUNNERS = ("direct", "dask", "dataflow", "flink", "spark")


def make_pipeline(runner: str = "direct", *, workers: int = 1, mode: str | None = None,
                  beam_args: Sequence[str] = ()) -> beam.Pipeline:
    """A Beam pipeline on the chosen runner.

    'direct' is Beam's FnApiRunner chosen explicitly: Beam 2.77's DirectRunner (and the
    default) first tries to download the Prism binary, which must never happen here.
    ``workers`` > 1 runs SDK workers in subprocesses ('multi_processing') unless ``mode`` says otherwise.
    """
    if runner == "direct":
        options = PipelineOptions(list(beam_args))
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = workers
        direct.direct_running_mode = mode or ("in_memory" if workers == 1 else "multi_processing")
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    if runner == "dask":
        from apache_beam.runners.dask.dask_runner import DaskRunner  # optional extra: flanpipe[dask]

        return beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(list(beam_args)))
    if runner in ("dataflow", "flink", "spark"):
        name = {"dataflow": "DataflowRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}[runner]
        return beam.Pipeline(options=PipelineOptions([f"--runner={name}", *beam_args]))
    raise CompileError(f"--runner: expected one of {', '.join(RUNNERS)}, got {runner!r}")
