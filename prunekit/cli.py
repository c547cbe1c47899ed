"""The ``prunekit`` command: run, list, report.

Every user error (bad config, missing data, a run directory that would be clobbered, a
corrupted file) ends as one ``error: ...`` line on stderr with exit code 2 and no
traceback; a method failing at run time ends with one line and exit code 1, unless
``--debug`` asks for the traceback.
"""
from __future__ import annotations

import os
from typing import Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="prunekit: prune PyTorch networks and measure the result honestly.")


def _fail(message: str, code: int = 2):
    for line in str(message).strip().splitlines() or ["unknown error"]:
        typer.echo(f"error: {line.strip()}", err=True)
    raise typer.Exit(code)


def default_threads() -> tuple[int, str]:
    """Cores not already busy: on a shared machine, more OpenMP threads than free cores
    makes every thread wait (2 threads beside another job ran several times slower than 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    n = max(1, min(cores, round(cores - load)))
    return n, f"{cores} cores, load {load:.1f}"


@app.command()
def run(config: Optional[str] = typer.Argument(None, help="Experiment YAML; omit for the built-in demo."),
        resume: bool = typer.Option(False, help="Continue a killed run: dense training from its checkpoint, "
                                                 "finished results kept. Refused if the config changed."),
        force: bool = typer.Option(False, help="Start over: delete this run's earlier outputs first."),
        progress: bool = typer.Option(True, help="Show progress (a bar in a terminal, one line per epoch "
                                                   "otherwise)."),
        out_dir: Optional[str] = typer.Option(None, help="Override the config's out_dir."),
        threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (default: the cores "
                                                                 "not already busy)."),
        debug: bool = typer.Option(False, help="Show the full traceback when a method fails.")):
    """Train (or load) the dense model, prune with each method at each target, fine-tune, report."""
    import torch

    from .data.standard import DatasetNotFoundError
    from .foundations.io import CheckpointError
    from .runner import load_config, run_experiment
    from .runner.config import ConfigError
    from .runner.run import MethodError

    if resume and force:
        _fail("--resume and --force exclude each other: continue the run, or start it over")
    try:
        cfg = load_config(config)
        if out_dir:
            cfg.out_dir = out_dir
        if threads is None:
            threads, why = default_threads()
            typer.echo(f"using {threads} CPU thread(s) ({why}); set --threads to change", err=True)
        torch.set_num_threads(threads)
        run_experiment(cfg, progress=progress, resume=resume, force=force, log=typer.echo)
    except (ConfigError, DatasetNotFoundError, CheckpointError) as e:
        if debug:
            raise
        _fail(str(e))
    except MethodError as e:
        if debug:
            raise
        _fail(f"{e} (run with --debug for the traceback)", code=1)


@app.command()
def prune(out: Optional[str] = typer.Option(None, help="Output directory: plan.json + model.safetensors (+ config.json "
                                                       "for HF models with uniform widths), report.md, report.json."),
          model: Optional[str] = typer.Option(None, help="Your model as an import path module:factory "
                                                           "(the factory takes no arguments)."),
          hf: Optional[str] = typer.Option(None, help="A HuggingFace model directory (or its config.json)."),
          checkpoint: Optional[str] = typer.Option(None, help="Weights: safetensors, or a torch.save file "
                                                               "(loaded with weights_only=True)."),
          input_shape: Optional[str] = typer.Option(None, help="Example input shape, e.g. 1,3,224,224."),
          inputs: Optional[str] = typer.Option(None, help="Example inputs as a safetensors file (one tensor, or "
                                                           "keyword tensors by name)."),
          criterion: str = typer.Option("l1", help="Importance criterion (l1, l2, l1-filter, bn_scale, random, ...)."),
          ratio: Optional[float] = typer.Option(None, help="Fraction of channels removed in every group."),
          flops_reduction: Optional[float] = typer.Option(None, help="Remove at least this fraction of the FLOPs."),
          speedup: Optional[float] = typer.Option(None, help="Target measured speed-up (latency-aware planning)."),
          ignore: list[str] = typer.Option([], help="Module names/patterns whose channels are kept (repeatable)."),
          uniform_layers: bool = typer.Option(False, help="Same widths in every block (HF: standard config.json)."),
          onnx: bool = typer.Option(False, help="Also export model.onnx, verified in ONNX Runtime."),
          force: bool = typer.Option(False, help="Replace an existing --out directory."),
          threads: int = typer.Option(1, min=1, help="CPU threads for pruning and timing."),
          debug: bool = typer.Option(False, help="Show tracebacks."),
          explain: bool = typer.Option(False, help="Print which channel groups are prunable and why the others are "
                                                   "frozen, then exit without pruning.")):
    """Slim your own model (or a HuggingFace one) and write it with a before/after report."""
    from .deploy.pipeline import PruneError, explain_model, prune_to_dir
    from .foundations.io import CheckpointError

    try:
        if explain:
            explain_model(model, hf, checkpoint, input_shape, inputs, ignore, log=typer.echo)
            return
        if out is None:
            raise PruneError("--out is required (or pass --explain to only print the channel-group table)")
        prune_to_dir(out, model, hf, checkpoint, input_shape, inputs, criterion, ratio, flops_reduction, speedup,
                     ignore, uniform_layers, onnx, force, threads, log=typer.echo)
    except (PruneError, CheckpointError) as e:
        if debug:
            raise
        _fail(str(e))


@app.command("list")
def list_():
    """Show models, datasets and methods, each with its options and their help."""
    from .data import DATASETS
    from .foundations.hparams import describe
    from .methods import METHODS
    from .models import MODELS
    from .runner.config import OPTION_HELP, dataset_option_table, model_option_table

    def options(table, owner=""):
        for name, (_, p) in sorted(table.items()):
            default = "" if p.default is p.empty else f" [default {p.default!r}]"
            help_ = OPTION_HELP.get(f"{owner}.{name}", OPTION_HELP.get(name, ""))
            typer.echo(f"      {name}{default}: {help_}".rstrip(": "))

    typer.echo("models (model_options):")
    for n in MODELS.names():
        fn = MODELS.get(n)
        typer.echo(f"  {n}: {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        options(model_option_table(n) or {}, n)
    shared = set(dataset_option_table("synthetic")) & set(dataset_option_table("digits"))
    typer.echo("datasets (dataset_options):")
    typer.echo("  options every dataset takes:")
    options({k: v for k, v in dataset_option_table("digits").items() if k in shared})
    for n in DATASETS.names():
        fn = DATASETS.get(n)
        typer.echo(f"  {n}: {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        options({k: v for k, v in dataset_option_table(n).items() if k not in shared})
    typer.echo("methods (options):")
    aliases: dict = {}
    for n in METHODS.names():
        aliases.setdefault(METHODS.get(n), []).append(n)
    for cls, names in aliases.items():
        main = cls.name if cls.name in names else names[0]
        also = [a for a in names if a != main]
        alias = f"; also called {', '.join(also)}" if also else ""
        typer.echo(f"  {main} ({cls.kind}; target = {cls.target_name}{alias})")
        for fname, tname, default, help_ in describe(cls.Hparams):
            typer.echo(f"      {fname} [{tname}, default {default!r}]: {help_}")


@app.command()
def report(run_dir: str = typer.Argument(..., help="A run directory holding summary.json.")):
    """Re-render report.md and accuracy_vs_sparsity.png from summary.json."""
    from .runner.report import render

    try:
        render(run_dir)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(f"wrote {run_dir}/report.md and {run_dir}/accuracy_vs_sparsity.png")


if __name__ == "__main__":
    app()
