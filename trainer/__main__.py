"""`python -m trainer train|eval|prompt-tune|export|hf-config|schema`: thin typer commands over trainer.train/evaluate/prompt_tuning."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flanpipe.errors import CompileError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train and evaluate on a compiled flanpipe split.")
err_console = Console(stderr=True)

Data = Annotated[Path, typer.Option("--data", help="Compiled split directory DIR/<split>.")]
ConfigPath = Annotated[Path, typer.Option("--config", help="Trainer config, e.g. trainer/configs/tiny.yaml.")]
Workdir = Annotated[Path, typer.Option("--workdir", help="Run directory: checkpoints, metrics.jsonl, eval/.")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="Config override a.b=value (repeatable).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar or table.")]


@app.callback()
def hosts(
    multi_host: Annotated[bool, typer.Option(
        "--multi-host", help="Join a multi-process run: jax.distributed.initialize (auto-detected on TPU pods, "
        "SLURM, Kubernetes; or give the three options below).")] = False,
    coordinator: Annotated[str | None, typer.Option(
        "--coordinator", help="host:port of process 0 (implies --multi-host).")] = None,
    num_processes: Annotated[int | None, typer.Option("--num-processes", help="Processes in the run.")] = None,
    process_id: Annotated[int | None, typer.Option("--process-id", help="This process's index.")] = None,
) -> None:
    """Train and evaluate on a compiled flanpipe split."""
    if multi_host or coordinator is not None:
        from trainer.sharding import initialize_hosts

        initialize_hosts(coordinator, num_processes, process_id)


@app.command()
def train(data: Data, config: ConfigPath, workdir: Workdir, set_: Overrides = None, quiet: Quiet = False) -> None:
    """Train (or resume) a model on a split; checkpoints and metrics go to the workdir."""
    from trainer.train import train as run  # jax loads only when a command runs

    result = run(data, config, workdir, overrides=set_ or [], progress=not quiet)
    print(json.dumps({"final_step": result.final_step, "loss": result.losses.get(result.final_step),
                      "metrics": str(result.metrics_file)}))


@app.command("eval")
def eval_(data: Data, config: ConfigPath, workdir: Workdir, set_: Overrides = None,
          step: Annotated[int | None, typer.Option("--step", help="Checkpoint step (default: latest).")] = None,
          dataset: Annotated[list[str] | None,
                             typer.Option("--dataset", help="Only this eval set (repeatable).")] = None,
          json_out: Annotated[bool, typer.Option("--json", help="Print the results JSON instead of a table.")] = False,
          ) -> None:
    """Evaluate a checkpoint on the split's held-out eval sets (rank classification / generation)."""
    from trainer.evaluate import evaluate

    results = evaluate(data, config, workdir, overrides=set_ or [], step=step, datasets=dataset,
                       console=Console(quiet=json_out))
    if json_out:
        print(json.dumps(results, indent=2, sort_keys=True))


@app.command("prompt-tune")
def prompt_tune(data: Data, config: ConfigPath, workdir: Workdir,
                model: Annotated[Path, typer.Option("--model", help="Workdir of the trained model (frozen).")],
                dataset: Annotated[str, typer.Option("--dataset", help="Held-out eval set to tune on.")],
                train_file: Annotated[Path | None,
                                      typer.Option("--train-file", help="Parquet of inputs/targets rows.")] = None,
                low_resource: Annotated[bool, typer.Option("--low-resource", help="Use 32 examples.")] = False,
                set_: Overrides = None, quiet: Quiet = False) -> None:
    """Train a soft prompt (length 10, weight decay 1e-4) on one dataset with the model frozen, then evaluate."""
    from trainer.prompt_tuning import prompt_tune as run

    run(data, config, model, dataset=dataset, workdir=workdir, train_file=train_file,
        low_resource_setting=low_resource, overrides=set_ or [], progress=not quiet, console=Console(quiet=quiet))


@app.command()
def export(config: ConfigPath, workdir: Workdir,
           out: Annotated[Path, typer.Option("--out", help="New directory for the Hugging Face checkpoint.")],
           step: Annotated[int | None, typer.Option("--step", help="Checkpoint step (default: latest).")] = None,
           set_: Overrides = None) -> None:
    """Write a run's checkpoint as a Hugging Face Llama directory (config.json + model.safetensors)."""
    from trainer.hf_llama import export as run

    print(run(workdir, config, out, step=step, overrides=set_ or []))


@app.command("hf-config")
def hf_config(path: Annotated[Path, typer.Argument(help="A Hugging Face Llama directory (config.json).")]) -> None:
    """Print the trainer config's model: section that matches a Hugging Face Llama checkpoint."""
    from trainer.hf_llama import model_section

    print(model_section(path), end="")


@app.command()
def schema(out: Annotated[Path, typer.Option("--out", help="Directory for the JSON Schema.")] = Path("docs/schemas")
           ) -> None:
    """Write trainer.schema.json, the JSON Schema of trainer config files (for editor completion)."""
    from trainer.config import json_schema

    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer.schema.json").write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    print(out / "trainer.schema.json")


def main() -> None:
    """Run the app; project errors print as one line and exit 1."""
    try:
        app()
    except CompileError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
