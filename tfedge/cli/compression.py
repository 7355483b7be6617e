"""``tfedge optimize`` (compress, convert, bench; ``--auto`` searches), ``analyze`` and ``demo``.

Example:
    >>> from tfedge.cli import main
    >>> main(["demo", "-o", "demo-out", "--epochs", "2"])  # doctest: +SKIP
    0
"""

from pathlib import Path

import click

from tfedge.cli.options import target_file
from tfedge.core.errors import TfedgeError
from tfedge.core.files import refuse_overwrite
from tfedge.devices.runner import DEFAULT_RUNS

__all__ = ["optimize", "analyze", "demo", "check_auto", "refuse_output_folder"]

# The workflows are imported inside the commands: `tfedge --help` must not import TensorFlow
# (0.15 s against 4.5 s).


@click.command()
@click.argument("model", type=click.Path())
@click.option(
    "--train",
    "train_data",
    required=True,
    help="Training data with labels (.npz, image folder or 'shards/*.tfrecord'), streamed.",
)
@click.option(
    "--val", "val_data", required=True, help="Validation data with labels (any DATA form)."
)
@click.option("--recipe", type=click.Path(), help="A YAML recipe of stages (instead of the flags).")
@click.option("--prune", type=float, help="Magnitude pruning to this sparsity (e.g. 0.8).")
@click.option("--structured", help="Structured sparsity: 2:4 (N:M) or a block such as 1x4.")
@click.option(
    "--prune-filters", type=float, help="Remove this fraction of conv filters (e.g. 0.5)."
)
@click.option(
    "--cluster", type=int, help="Weight clustering to N shared values per layer (e.g. 16)."
)
@click.option("--qat", is_flag=True, help="Quantization-aware training (int8).")
@click.option("--distill", is_flag=True, help="Distill into a half-width student of the model.")
@click.option(
    "--factorize", type=float, help="Low-rank factorization: energy kept (<1) or a rank (>=1)."
)
@click.option("--epochs", type=click.IntRange(1, 1000), help="Fine-tuning epochs for every stage.")
@click.option(
    "--strategy",
    type=click.Choice(["default", "mirrored", "multiworker"]),
    help="tf.distribute strategy (multiworker: MultiWorkerMirroredStrategy from TF_CONFIG).",
)
@click.option("--target", help="Converter target profile for the int8 models (e.g. edgetpu).")
@click.option("--device", "devices", multiple=True, help="Bench on local (default) or ssh://HOST.")
@click.option("--ssh-config", type=click.Path(), help="ssh config file for ssh:// devices.")
@click.option(
    "--runs",
    type=click.IntRange(1, 100000),
    help=f"Timed runs per model [{DEFAULT_RUNS}; 100 with --auto].",
)
@click.option("--no-resume", is_flag=True, help="Retrain stages even when checkpoints exist.")
@click.option(
    "--auto", is_flag=True, help="Search the stages for the best model within --tolerance."
)
@click.option(
    "--tolerance", type=float, help="--auto: accuracy the result may lose (0.01 = 1 point)."
)
@click.option(
    "--objective",
    type=click.Choice(["size", "latency", "balanced"]),
    help="--auto: smallest gzip size, lowest p50 on --device, or both [size].",
)
@click.option("--budget-minutes", type=float, help="--auto: stop after this long, keep the best.")
@click.option("--trials", type=click.IntRange(1, 100000), help="--auto: at most this many trials.")
@click.option("--storage", help="--auto: Optuna storage URL shared by workers [DIR/search.db].")
@click.option("--study", "study_name", help="--auto: the study name [auto-OBJECTIVE].")
@click.option("--resume", is_flag=True, help="--auto: continue an existing study (error if none).")
@click.option(
    "--fidelity",
    type=click.Choice(["full", "multi"]),
    help="--auto: fine-tune every candidate fully, or screen each briefly first (1 epoch on "
    "25 %% of --train) and fully fine-tune only those Optuna's successive halving promotes "
    "[full].",
)
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Output folder.")
def optimize(
    model,
    train_data,
    val_data,
    recipe,
    prune,
    structured,
    prune_filters,
    cluster,
    qat,
    distill,
    factorize,
    epochs,
    strategy,
    target,
    devices,
    ssh_config,
    runs,
    no_resume,
    auto,
    tolerance,
    objective,
    budget_minutes,
    trials,
    storage,
    study_name,
    resume,
    fidelity,
    out_dir,
):
    """Compress a Keras model (prune, QAT, cluster, distill, factorize), convert to int8, bench, report.

    With --auto, search the stages for the smallest (or fastest) fully-int8 model that keeps
    --tolerance, on Optuna; --storage/--study let several machines share one search.
    """
    refuse_output_folder(
        out_dir,
        {
            "MODEL": model,
            "--train": train_data,
            "--val": val_data,
            "--recipe": recipe,
            "--ssh-config": ssh_config,
            "--target": target_file(target),
        },
    )
    from tfedge.commands.optimize import load_recipe, stages_from_flags
    from tfedge.commands.optimize import optimize as run_optimize

    flags = (
        any(v not in (None, False) for v in (prune, structured, prune_filters, cluster, factorize))
        or qat
        or distill
    )
    search_options = (tolerance, objective, budget_minutes, trials, storage, study_name, fidelity)
    if auto:
        check_auto(flags or recipe, strategy, devices, storage, study_name, tolerance)
        from tfedge.commands.auto import auto_optimize

        auto_optimize(
            model,
            train_data,
            val_data,
            out_dir=out_dir,
            tolerance=tolerance,
            objective=objective or "size",
            device=devices[0] if devices else "local",
            ssh_config=ssh_config,
            budget_minutes=budget_minutes,
            max_trials=trials,
            storage=storage,
            study_name=study_name,
            resume=resume,
            epochs=epochs,
            strategy=strategy if strategy == "mirrored" else None,
            target=target,
            runs=runs or 100,
            fidelity=fidelity or "full",
        )
        return
    if resume or any(v is not None for v in search_options):
        raise TfedgeError(
            "--tolerance, --objective, --budget-minutes, --trials, --storage, --study, "
            "--fidelity and --resume belong to the search",
            "add --auto (e.g. --auto --tolerance 0.01 --objective size)",
        )
    if recipe:
        if flags:
            raise TfedgeError(
                "give either --recipe or stage flags, not both", "put every stage in the recipe"
            )
        loaded = load_recipe(recipe)
        stages, convert_options = loaded["stages"], loaded["convert"]
        if epochs is not None:
            stages = [{**stage, "epochs": epochs} for stage in stages]
    else:
        convert_options = {}
        stages = stages_from_flags(
            prune, structured, prune_filters, cluster, qat, distill, factorize, epochs
        )
    if strategy in ("mirrored", "multiworker"):
        from tfedge.models.training import resolve_strategy

        strategy_name, strategy = strategy, resolve_strategy(strategy)
        from tfedge.core.console import echo

        kind = (
            "MultiWorkerMirroredStrategy" if strategy_name == "multiworker" else "MirroredStrategy"
        )
        echo(f"strategy: {kind} over {strategy.num_replicas_in_sync} replicas")
    else:
        strategy = None
    run_optimize(
        model,
        train_data,
        val_data,
        stages=stages,
        out_dir=out_dir,
        strategy=strategy,
        target=target,
        devices=list(devices) or ["local"],
        ssh_config=ssh_config,
        runs=runs or DEFAULT_RUNS,
        resume=not no_resume,
        convert_options=convert_options,
    )


@click.command()
@click.argument("model", type=click.Path())
@click.option(
    "--calib",
    required=True,
    help="Calibration data: .npz (x[, y]), an image folder or TFRecord shards ('shards/*.tfrecord').",
)
@click.option("--data", help="Labelled evaluation data, any DATA form (needed with --fix).")
@click.option("--json", "json_path", type=click.Path(), help="Write the analysis JSON here.")
@click.option(
    "--explorer", type=click.Path(), help="Write per-operator SQNR as Model Explorer node data."
)
@click.option("--fix", is_flag=True, help="Try the fixes, write the best to -o.")
@click.option("-o", "--output", type=click.Path(), help="The fixed .tflite (with --fix).")
@click.option("--calib-samples", default=200, show_default=True, type=click.IntRange(1, 100000))
def analyze(model, calib, data, json_path, explorer, fix, output, calib_samples):
    """Per-layer int8 error against the float model; --fix finds the fix that keeps accuracy."""
    from tfedge.commands.analyze import analyze as run_analyze
    from tfedge.core.console import echo

    if output and not fix:
        raise click.UsageError("-o goes with --fix (the fixed model)")
    refuse_overwrite(
        {"--json": json_path, "--explorer": explorer, "-o": output},
        {"MODEL": model, "--calib": calib, "--data": data},
    )
    report = run_analyze(
        model,
        calib,
        data=data,
        fix=fix,
        output=output,
        json_path=json_path,
        explorer=explorer,
        calib_samples=calib_samples,
    )
    echo("worst layers (int8 vs float on the calibration data):")
    echo(
        f"  {'layer':<28} {'op':<18} {'SQNR dB':>8} {'rmse/scale':>10} {'max abs':>9} {'cosine':>8}"
    )
    for row in report["worst"][:5]:
        echo(
            f"  {row['name'][:28]:<28} {row['op'][:18]:<18} {row['sqnr_db']:>8.1f} "
            f"{row['rmse_over_scale'] or 0:>10.3f} {row['max_abs_error']:>9.4f} {row['cosine']:>8.4f}"
        )
    if fix:
        echo(f"float32 accuracy: {report['float_accuracy'] * 100:.2f} %")
        for item in report["fixes"]:
            if "error" in item:
                echo(f"  {item['fix']:<40} failed: {item['error']}")
                continue
            echo(
                f"  {item['fix'][:40]:<40} {item['accuracy'] * 100:6.2f} %  "
                f"{item['size_bytes']:>9,} B  p50 {item['p50_ms']:.3f} ms  "
                f"fully integer: {'yes' if item['fully_integer'] else 'no'}  "
                f"EdgeTPU: {'yes' if item['edgetpu_compatible'] else 'no'}"
            )
        echo(f"chosen: {report['chosen']}: {report['verdict']}")
        if report["chosen"]:
            echo(f"wrote {output} ({report['chosen']})")
    if json_path:
        echo(f"analysis: {json_path}")
    if explorer:
        echo(
            f"Model Explorer node data: {explorer}, for the int8 model of `tfedge convert MODEL "
            f"--calib DATA`: model-explorer MODEL_int8.tflite --node_data_paths={explorer}"
        )


def check_auto(stage_flags, strategy, devices, storage, study_name, tolerance) -> None:
    """The combinations ``optimize --auto`` refuses, each with the way out.

    Raises:
        TfedgeError: the first refused combination, with its hint.

    Example:
        >>> check_auto(False, None, (), None, None, 0.01)  # a plain search: no error
    """
    if stage_flags:
        raise TfedgeError(
            "--auto searches the stages itself: give either --auto or a recipe / stage flags",
            "drop --recipe and the stage flags (--prune, --qat, ...); --epochs may stay",
        )
    if tolerance is None:
        raise TfedgeError(
            "--auto needs --tolerance: the accuracy the result may lose against the float model",
            "e.g. --tolerance 0.01 for one point",
        )
    if strategy == "multiworker":
        raise TfedgeError(
            "--auto --strategy multiworker is not supported: every worker of a multi-worker "
            "fine-tune must run the same candidate, and the search gives each its own",
            "share the search instead: start the same command on each machine with "
            "--storage URL --study NAME",
        )
    if len(devices) > 1:
        raise TfedgeError(
            f"--auto measures on one device, got {len(devices)} --device options",
            "give the one device whose latency matters",
        )
    if storage and not study_name:
        raise TfedgeError(
            "--storage needs --study: the workers that share a storage join a study by its name",
            "e.g. --storage postgresql://user:pass@host/db --study digits-size",
        )


@click.command()
@click.option(
    "-o", "--output", "out_dir", default="tfedge-demo", show_default=True, type=click.Path()
)
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1, 500))
def demo(out_dir, epochs):
    """Train the digits reference CNN, convert to int8, bench float32 vs int8, write a report."""
    from tfedge.commands.demo import run_demo

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise TfedgeError(
            f"-o {out_dir} is a file; the demo writes a folder (models, report.json, report.html)",
            "give -o a new or existing folder, e.g. -o demo-out",
        )
    run_demo(out_dir, epochs=epochs)


# What ``optimize -o DIR`` (with or without --auto) writes in DIR, and the folders it rewrites.
OPTIMIZE_FILES = (
    "model.keras",
    "model.h5",
    "model.tflite",
    "report.json",
    "report.html",
    "recipe.yaml",
    "val.npz",
    "confirm.npz",
    "search.db",
)
OPTIMIZE_FOLDERS = ("checkpoints", "cache", "candidates")


def refuse_output_folder(out_dir, inputs: dict) -> None:
    """Refuse an ``optimize -o`` folder that is a file or whose outputs would overwrite an input.

    Raises:
        TfedgeError: what would be overwritten, and to give ``-o`` another folder.

    Example:
        >>> refuse_output_folder("out", {"MODEL": "out/model.keras"})  # doctest: +SKIP
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise TfedgeError(
            f"-o {out_dir} is a file; optimize writes a folder (model.tflite, report.json, ...)",
            "give -o a new or existing folder, e.g. -o out/",
        )
    try:
        refuse_overwrite(
            {"-o": [f"{out_dir.rstrip('/')}/{name}" for name in OPTIMIZE_FILES]},
            inputs,
            folders={"-o": [folder / name for name in OPTIMIZE_FOLDERS]},
        )
    except TfedgeError as exc:
        raise TfedgeError(exc.message, "give -o another folder, e.g. -o out/") from None
