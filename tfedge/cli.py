"""The ``tfedge`` command line (click).

:func:`main` is a plain function that returns the exit status, so it can be tested in-process;
:func:`run` is the console script. Expected failures (:class:`~tfedge.core.errors.TfedgeError`, bad
options) print one ``Error:`` line, a ``Hint:`` where one helps, and exit with status 1; ``--debug``
anywhere on the line shows the traceback and TensorFlow's own logs instead.

Example:
    >>> main(["inspect", "model.tflite", "--json"])  # doctest: +SKIP
    0
"""

import errno
import json
import os
import sys
from pathlib import Path

import click

from tfedge.converters import IO_TYPES, MODES
from tfedge.core.errors import TfedgeError
from tfedge.core.files import refuse_overwrite
from tfedge.devices.runner import DEFAULT_RUNS, DEFAULT_WARMUP
from tfedge.version import __version__

__all__ = ["main", "run", "cli"]


def _split(values) -> list[str]:
    """Options that may be repeated or comma-separated: ``--keep-float a,b --keep-float c``."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfedge")
def cli():
    """tfedge: a Keras model to a small, fast, fully-int8 TFLite model, proven on its device.

    Add --debug anywhere to see tracebacks and TensorFlow's logs.
    """


@cli.command()
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


@cli.command()
@click.argument("model", type=click.Path())
@click.option(
    "--calib",
    help="Calibration data: .npz (x[, y]), an image folder or TFRecord shards ('shards/*.tfrecord').",
)
@click.option("--calib-samples", default=300, show_default=True, type=click.IntRange(1, 100000))
@click.option(
    "--mode", type=click.Choice(MODES), default=None, help="Default int8 (fully integer)."
)
@click.option("--io", "io_type", type=click.Choice(IO_TYPES), help="Input/output type (int8 mode).")
@click.option("--target", help="Target profile (edgetpu, ...) or a profile YAML file.")
@click.option("--labels", type=click.Path(), help="Label file to embed as TFLite metadata.")
@click.option("--mean", help="Metadata input normalization mean (comma-separated per channel).")
@click.option("--std", help="Metadata input normalization std (comma-separated per channel).")
@click.option("--keep-float", multiple=True, metavar="LAYER", help="Leave this layer float.")
@click.option(
    "--int16",
    multiple=True,
    metavar="LAYER",
    help="int16 activations for this layer and its readers (mixed int8/int16x8, int8 I/O).",
)
@click.option(
    "--weights",
    type=click.Choice(["int8", "int4"]),
    default="int8",
    show_default=True,
    help="Weight precision (int4: channel-wise, via ai-edge-quantizer).",
)
@click.option("-o", "--output", required=True, type=click.Path(), help="The .tflite to write.")
def convert(
    model,
    calib,
    calib_samples,
    mode,
    io_type,
    target,
    labels,
    mean,
    std,
    keep_float,
    int16,
    weights,
    output,
):
    """Convert a Keras model (.keras/.h5, Keras 2 or 3) or SavedModel to TFLite."""
    refuse_overwrite(
        {"-o": output},
        {"MODEL": model, "--calib": calib, "--labels": labels, "--target": _file(target)},
    )
    from tfedge.converters import convert_file
    from tfedge.core.console import echo

    result = convert_file(
        model,
        output,
        mode=mode or "int8",
        calib=calib,
        io=io_type,
        calib_samples=calib_samples,
        keep_float=_split(keep_float),
        int16=_split(int16),
        weights=weights,
        labels=labels,
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        target=target,
    )
    info = result.info
    echo(
        f"wrote {result.path} ({len(result.blob) / 1024:.1f} KB, {result.mode}, "
        f"input {info['input'][0]['dtype']}, fully integer: {'yes' if info['fully_integer'] else 'no'})"
    )
    if result.target is not None and result.target.edgetpu:
        mapping = info.get("edgetpu") or {}
        echo(
            f"EdgeTPU (predicted): {mapping.get('mapped_ops')} ops mapped, {mapping.get('cpu_ops')} on the CPU"
        )
    if result.compile_skipped:
        echo(f"note: {result.compile_skipped}")
    if result.compiled:
        compiled = result.compiled
        echo(
            f"compiled {compiled['compiled_path']}: {compiled['mapped_ops']} ops on the EdgeTPU, "
            f"{compiled['cpu_ops']} on the CPU"
        )
        for op in compiled.get("ops", []):
            if not op.get("mapped"):
                echo(f"  CPU: {op.get('op')} x{op.get('count')}: {op.get('status')}")


def _floats(text, option):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number list, e.g. 127.5 or 0,0,0", param_hint=option
        ) from None


@cli.command()
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
    _refuse_output_folder(
        out_dir,
        {
            "MODEL": model,
            "--train": train_data,
            "--val": val_data,
            "--recipe": recipe,
            "--ssh-config": ssh_config,
            "--target": _file(target),
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
        _check_auto(flags or recipe, strategy, devices, storage, study_name, tolerance)
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


@cli.command()
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


def _check_auto(stage_flags, strategy, devices, storage, study_name, tolerance) -> None:
    """The combinations ``optimize --auto`` refuses, each with the way out."""
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


@cli.command(name="inspect")
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the design's JSON instead of a table.")
def inspect_command(model, as_json):
    """Show a .tflite model's operators, tensors, integer-ness and EdgeTPU verdict (no TensorFlow)."""
    from tfedge.core.inspector import format_table, inspect_model

    info = inspect_model(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(format_table(info))


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option(
    "--data", help="Evaluation data: .npz (x, y), an image folder or 'shards/*.tfrecord'."
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    help="local (default) or ssh://[USER@]HOST[:PORT]; repeat for a fleet.",
)
@click.option("--devices-file", type=click.Path(), help="A file with one device URL per line.")
@click.option("--ssh-config", type=click.Path(), help="ssh config file (default: the user's).")
@click.option("--delegate", type=click.Choice(["edgetpu"]), help="Run on a Coral EdgeTPU.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256))
@click.option("--warmup", default=DEFAULT_WARMUP, show_default=True, type=click.IntRange(0, 100000))
@click.option("--runs", default=DEFAULT_RUNS, show_default=True, type=click.IntRange(1, 1000000))
@click.option(
    "--json", "json_path", type=click.Path(), help="Write results JSON here (as they arrive)."
)
@click.option("--html", "html_path", type=click.Path(), help="Write the HTML report here.")
def bench(
    models,
    data,
    devices,
    devices_file,
    ssh_config,
    delegate,
    threads,
    warmup,
    runs,
    json_path,
    html_path,
):
    """Measure accuracy, size and latency of .tflite models, locally or on devices."""
    from tfedge.commands.bench import bench as run_bench
    from tfedge.commands.bench import failed_rows, format_results
    from tfedge.core.console import echo

    refuse_overwrite(
        {"--json": json_path, "--html": html_path},
        {
            "MODEL": list(models),
            "--data": data,
            "--devices-file": devices_file,
            "--ssh-config": ssh_config,
        },
    )
    urls = list(devices)
    if devices_file:
        urls += _read_devices_file(devices_file)
    if ssh_config and not Path(ssh_config).is_file():
        raise TfedgeError(
            f"ssh config not found: {ssh_config}", "pass an existing file to --ssh-config"
        )
    report = run_bench(
        models,
        data=data,
        devices=urls or ["local"],
        ssh_config=ssh_config,
        delegate=delegate,
        threads=threads,
        warmup=warmup,
        runs=runs,
        json_path=json_path,
    )
    rows = report["results"]
    if any(not row.get("error") for row in rows):
        echo(format_results(rows))
    failures = failed_rows(rows)
    for row in failures:
        device = (row.get("device") or {}).get("name", "local")
        click.echo(f"Error: {row['model']} on {device}: {row['error']}", err=True)
        if row.get("hint"):
            click.echo(f"Hint: {row['hint']}", err=True)
    if json_path:
        echo(f"results: {json_path}")
    if html_path:
        from tfedge.reports.page import write_html

        write_html(
            html_path, rows, title="tfedge bench: " + ", ".join(Path(m).name for m in models)
        )
        echo(f"report: {html_path}")
    return 1 if failures else 0


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The .html file to write.")
@click.option("--title", help="Page title (default: the input file names).")
def report(inputs, output, title):
    """One self-contained HTML page (table and plots) from bench, optimize or analyze JSON files."""
    from tfedge.core.console import echo
    from tfedge.reports.page import build_report

    refuse_overwrite({"-o": output}, {"RESULTS": list(inputs)})
    echo(f"report: {build_report(inputs, output, title=title)}")


@cli.command()
@click.argument("model_a", type=click.Path())
@click.argument("model_b", type=click.Path())
@click.option(
    "--data",
    help="Inputs (.npz, image folder or 'shards/*.tfrecord'); default: seeded random inputs.",
)
@click.option("--samples", type=click.IntRange(1, 1000000), help="Use at most N samples.")
@click.option("--json", "json_path", type=click.Path(), help="Write the comparison JSON here.")
def compare(model_a, model_b, data, samples, json_path):
    """Run two .tflite models on the same inputs: output differences and the first divergent op."""
    from tfedge.commands.compare import compare as run_compare
    from tfedge.commands.compare import format_comparison, write_json
    from tfedge.core.console import echo

    refuse_overwrite({"--json": json_path}, {"A": model_a, "B": model_b, "--data": data})
    result = run_compare(model_a, model_b, data=data, samples=samples)
    echo(format_comparison(result))
    if json_path:
        echo(f"comparison: {write_json(json_path, result)}")


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


def _refuse_output_folder(out_dir, inputs: dict) -> None:
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


def _file(value):
    """A ``--target`` that names a profile file (not a built-in profile name)."""
    return value if value and Path(value).is_file() else None


def _read_devices_file(path) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise TfedgeError(
            f"devices file not found: {path}", "one device URL per line, # for comments"
        )
    if file.stat().st_size > 1024 * 1024:
        raise TfedgeError(
            f"devices file {path} is {file.stat().st_size:,} bytes; expected a short list of URLs",
            "one device URL per line, # for comments",
        )
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TfedgeError(
            f"devices file {path} is not UTF-8 text (byte {exc.start} is "
            f"0x{exc.object[exc.start]:02x})",
            "one device URL per line, # for comments",
        ) from None
    urls = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            urls.append(line)
    if not urls:
        raise TfedgeError(f"devices file {path} lists no device", "one device URL per line")
    return urls


_OS_HINTS = {
    errno.EACCES: "check the permissions of the path (ls -l), or write somewhere you may",
    errno.EPERM: "check the permissions of the path (ls -l), or write somewhere you may",
    errno.EROFS: "the file system is read-only: write the output somewhere else",
    errno.ENOSPC: "the disk is full: free space (df -h) or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free space or write somewhere else",
    errno.EISDIR: "the path is a folder: give a file name inside it",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.ENOENT: "check the path: a folder on it does not exist",
    errno.ENAMETOOLONG: "use a shorter path",
}


def os_error(exc: OSError) -> tuple[str, str]:
    """The ``Error:`` line and hint for an operating-system error (permission, disk full...).

    Example:
        >>> os_error(PermissionError(13, "Permission denied", "/out/m.tflite"))[0]
        'cannot use /out/m.tflite: Permission denied'
    """
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno, "check the path and run again with --debug if it looks right")
    return f"cannot use {str(where)[:300]}: {reason}", hint


def _print_error(message: str, hint: str | None = None) -> None:
    # One line whatever the message quotes (a library's multi-line error, a file's contents),
    # and of a readable length.
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    if len(message) > 1000:
        message = message[:1000] + " ..."
    click.echo(f"Error: {message}", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)


def main(argv=None) -> int:
    """Run the command line with ``argv`` and return the exit status (0 ok, 1 error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if debug:
        os.environ["TFEDGE_DEBUG"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    try:
        status = cli.main(args=args, prog_name="tfedge", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "tfedge"
        _print_error(exc.format_message(), f"see '{command} --help'")
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        _print_error("aborted")
        return 1
    except click.ClickException as exc:
        _print_error(exc.format_message())
        return 1
    except TfedgeError as exc:
        if debug:
            raise
        flag = f"--{exc.option.replace('_', '-')}: " if getattr(exc, "option", None) else ""
        _print_error(flag + exc.message, exc.hint)
        return 1
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 1
    except OSError as exc:
        if debug:
            raise
        _print_error(*os_error(exc))
        return 1
    except Exception as exc:
        if debug:
            raise
        text = str(exc).strip().splitlines()
        _print_error(
            f"unexpected failure: {type(exc).__name__}: {text[0][:300] if text else ''}",
            "run again with --debug for the traceback, and report it if the input looks right",
        )
        return 1
    return status if isinstance(status, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
