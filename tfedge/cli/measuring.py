"""``tfedge bench`` (accuracy, size, latency on devices), ``compare`` (two models) and ``report``.

Example:
    >>> from tfedge.cli import main
    >>> main(["bench", "model.tflite", "--runs", "20"])  # doctest: +SKIP
    0
"""

from pathlib import Path

import click

from tfedge.core.errors import TfedgeError
from tfedge.core.files import refuse_overwrite
from tfedge.devices.runner import DEFAULT_RUNS, DEFAULT_WARMUP

__all__ = ["bench", "compare", "report", "read_devices_file"]

# The workflows are imported inside the commands: `tfedge --help` must not import TensorFlow
# (0.15 s against 4.5 s).


@click.command()
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
        urls += read_devices_file(devices_file)
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


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The .html file to write.")
@click.option("--title", help="Page title (default: the input file names).")
def report(inputs, output, title):
    """One self-contained HTML page (table and plots) from bench, optimize or analyze JSON files."""
    from tfedge.core.console import echo
    from tfedge.reports.page import build_report

    refuse_overwrite({"-o": output}, {"RESULTS": list(inputs)})
    echo(f"report: {build_report(inputs, output, title=title)}")


@click.command()
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


def read_devices_file(path) -> list[str]:
    """The device URLs of a ``--devices-file``: one a line, ``#`` starts a comment.

    Raises:
        TfedgeError: a missing, oversized, non-UTF-8 or empty file.

    Example:
        >>> read_devices_file("devices.txt")  # doctest: +SKIP
        ['local', 'ssh://tfedge-pi']
    """
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
