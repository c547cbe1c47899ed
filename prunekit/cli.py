"""The ``prunekit`` command: run, list, report."""
from __future__ import annotations

import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help="prunekit: prune PyTorch networks and measure the result honestly.")


@app.command()
def run(config: Optional[str] = typer.Argument(None, help="Experiment YAML; omit for the built-in demo."),
        resume: bool = typer.Option(False, help="Continue a killed run: dense training from its checkpoint, "
                                                 "skipping results already written."),
        progress: bool = typer.Option(True, help="Show progress bars."),
        out_dir: Optional[str] = typer.Option(None, help="Override the config's out_dir.")):
    """Train (or load) the dense model, prune with each method at each target, fine-tune, report."""
    from .runner import load_config, run_experiment
    from .runner.config import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if out_dir:
        cfg.out_dir = out_dir
    run_experiment(cfg, progress=progress and sys.stderr.isatty(), resume=resume, log=typer.echo)


@app.command("list")
def list_():
    """Show models, datasets and methods (with each method's options)."""
    from .data import names as dnames
    from .foundations.hparams import describe
    from .methods import METHODS
    from .models import names as mnames

    typer.echo("models:   " + ", ".join(mnames()))
    typer.echo("datasets: " + ", ".join(dnames()))
    typer.echo("methods:")
    for n in METHODS.names():
        cls = METHODS.get(n)
        typer.echo(f"  {n} ({cls.kind}; target = {cls.target_name})")
        for fname, tname, default, help_ in describe(cls.Hparams):
            typer.echo(f"      {fname} [{tname}, default {default!r}]: {help_}")


@app.command()
def report(run_dir: str = typer.Argument(..., help="A run directory holding summary.json.")):
    """Re-render report.md and accuracy_vs_sparsity.png from summary.json."""
    from .runner.report import render

    try:
        render(run_dir)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote {run_dir}/report.md and {run_dir}/accuracy_vs_sparsity.png")


if __name__ == "__main__":
    app()
