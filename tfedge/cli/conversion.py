"""``tfedge convert`` (Keras to TFLite) and ``tfedge inspect`` (a .tflite file's operators).

Example:
    >>> from tfedge.cli import main
    >>> main(["inspect", "model.tflite"])  # doctest: +SKIP
    0
"""

import json

import click

from tfedge.cli.options import floats, split_values, target_file
from tfedge.converters import IO_TYPES, MODES
from tfedge.core.files import refuse_overwrite

__all__ = ["convert", "inspect_command"]

# The workflows are imported inside the commands: `tfedge --help` must not import TensorFlow
# (0.15 s against 4.5 s).


@click.command()
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
        {"MODEL": model, "--calib": calib, "--labels": labels, "--target": target_file(target)},
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
        keep_float=split_values(keep_float),
        int16=split_values(int16),
        weights=weights,
        labels=labels,
        mean=floats(mean, "--mean"),
        std=floats(std, "--std"),
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


@click.command(name="inspect")
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
