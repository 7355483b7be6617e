"""Host side of ``tfedge bench``: check inputs, run the device runner locally or on devices, collect.

Local runs start :mod:`tfedge.devices.runner` in a subprocess of their own (:mod:`tfedge.devices.protocol`);
``ssh://`` devices (:mod:`tfedge.devices.ssh`) copy the same runner to the device and run it there. Either way the rows have the
same JSON schema, so accuracy and ``outputs_sha256`` compare across devices directly.

Example:
    >>> report = bench(["a.tflite", "b.tflite"], data="digits_test.npz", runs=100)  # doctest: +SKIP
    >>> [r["latency_ms"]["p50"] for r in report["results"]]  # doctest: +SKIP
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import json
import tempfile
import threading
from pathlib import Path

from tfedge.core.console import progress
from tfedge.core.errors import DataError, InputFileError, missing_file
from tfedge.core.files import write_atomically
from tfedge.core.streams import stream_data
from tfedge.devices.arrays import to_arrays
from tfedge.devices.fleet import bench_fleet
from tfedge.devices.runner import DEFAULT_RUNS, DEFAULT_WARMUP
from tfedge.version import __version__

__all__ = [
    "bench",
    "check_tflite",
    "prepare_data",
    "write_results",
    "failed_rows",
    "format_results",
]

TFLITE_HINT = "pass .tflite files written by `tfedge convert` (or any TFLite converter)"


def check_tflite(path, label: str = "", hint: str = TFLITE_HINT) -> Path:
    """The path of a ``.tflite`` file, checked to exist and to carry TFLite's identifier.

    Args:
        path: the file.
        label: how to name it in errors (e.g. ``"A"`` gives "model A").
        hint: the fix to suggest.

    Raises:
        InputFileError: the file is missing or is not a TFLite model.

    Example:
        >>> check_tflite("model.tflite")  # doctest: +SKIP
        PosixPath('model.tflite')
    """
    path = Path(path)
    name = f"model {label}".strip()
    if not path.is_file():
        raise missing_file(name, path, hint)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise InputFileError(
            f"{name + ' (' + str(path) + ')' if label else str(path)} is not a TFLite model "
            "(no TFL3 identifier at byte 4)",
            hint
            + (
                "; convert Keras models first with `tfedge convert`"
                if path.suffix in (".keras", ".h5")
                else ""
            ),
        )
    return path


def prepare_data(data, model_path):
    """Load ``data`` (any accepted form) shaped for the model's input; returns ``(x, y)`` or None."""
    if data is None:
        return None
    from tfedge.core.inspector import inspect_model

    info = inspect_model(model_path)
    shape = tuple(info["input"][0]["shape"][1:]) if info["input"] else None
    return to_arrays(stream_data(data, input_shape=shape, name="--data"))


def check_labels(y, model_paths) -> None:
    """Refuse labels the models cannot predict (accuracy would silently read 0 %).

    A one-output model is a binary classifier (labels 0 and 1); otherwise the classes are the
    elements of the first output.

    Raises:
        DataError: a label is below 0 or beyond the last class of a model.

    Example:
        >>> check_labels(np.array([0, 99]), ["digits_int8.tflite"])  # doctest: +SKIP
        Traceback (most recent call last):
        DataError: labels range 0..99 but the model digits_int8.tflite has 10 classes (0..9)
    """
    if y is None or not len(y):
        return
    from tfedge.core.inspector import inspect_model

    low, high = int(y.min()), int(y.max())
    for path in model_paths:
        try:
            outputs = inspect_model(path)["output"]
        except InputFileError:
            continue  # a corrupt model gets its own error row from the runner
        if not outputs:
            continue
        classes = 1
        for dim in outputs[0]["shape"][1:]:
            classes *= int(dim)
        kind = "a one-output binary classifier: " if classes == 1 else ""
        classes = max(classes, 2)
        if low < 0 or high >= classes:
            raise DataError(
                f"labels range {low}..{high} but the model {Path(path).name} has {classes} "
                f"classes ({kind}0..{classes - 1})",
                f"give labels 0..{classes - 1} (the index of the model's output), or bench the "
                "model the data is labelled for",
                option="data",
            )


def write_results(path, rows) -> None:
    """Write the design's results JSON atomically (readers never see half a file)."""
    payload = {"tfedge_version": __version__, "results": rows}
    write_atomically(path, json.dumps(payload, indent=2) + "\n")


def failed_rows(rows) -> list:
    """The error rows (a model or device that could not be measured)."""
    return [row for row in rows if row.get("error")]


def bench(
    models,
    data=None,
    devices=("local",),
    ssh_config=None,
    delegate=None,
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    json_path=None,
    on_result=None,
) -> dict:
    """Bench ``.tflite`` models on one or more devices; rows arrive as each model finishes.

    Args:
        models: ``.tflite`` paths.
        data: evaluation data (``.npz``, image folder, arrays) or None for a random input.
        devices: ``"local"`` and/or ``"ssh://[USER@]HOST[:PORT]"`` URLs; several run in parallel.
        ssh_config: an ssh config file to use instead of the user's.
        delegate: ``"edgetpu"`` or None.
        threads: interpreter threads.
        warmup: untimed runs per model.
        runs: timed runs per model.
        json_path: where to write the results JSON; rewritten as each row arrives.
        on_result: called with each row as it arrives.

    Returns:
        ``{"tfedge_version": ..., "results": [...]}``; failed rows carry an ``"error"`` key.
    """
    paths = [check_tflite(m) for m in models]
    if not paths:
        raise InputFileError("no model given", TFLITE_HINT)
    arrays = prepare_data(data, paths[0])
    if arrays is not None:
        check_labels(arrays[1], paths)
    rows = []
    lock = threading.Lock()

    def collect(row):
        with lock:
            rows.append(row)
            if json_path:
                write_results(json_path, rows)
        if on_result:
            on_result(row)

    devices = list(devices or ["local"])
    bar = progress(total=len(paths) * len(devices), desc="benchmarking", unit="model")

    def arrived(row):
        collect(row)
        bar.update(1)

    # Local runs go through the same subprocess runner as devices: peak RSS is the runner's own
    # (not this process with TensorFlow loaded), and a crashing interpreter cannot take us down.
    try:
        with tempfile.TemporaryDirectory(prefix="tfedge-bench-") as tmp:
            npz = None
            if arrays is not None and hasattr(arrays[0], "path"):  # a large set, already on disk
                npz = Path(arrays[0].path)
            elif arrays is not None:
                import numpy as np

                npz = Path(tmp) / "data.npz"
                payload = (
                    {"x": arrays[0]} if arrays[1] is None else {"x": arrays[0], "y": arrays[1]}
                )
                np.savez(npz, **payload)
            bench_fleet(
                devices,
                [str(p) for p in paths],
                data=str(npz) if npz else None,
                threads=threads,
                warmup=warmup,
                runs=runs,
                delegate=delegate,
                ssh_config=ssh_config,
                on_result=arrived,
            )
    finally:
        bar.close()
    if json_path and not rows:
        write_results(json_path, rows)
    return {"tfedge_version": __version__, "results": rows}


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_results(rows) -> str:
    """A plain-text table of result rows (errors on their own lines)."""
    header = (
        "model",
        "device",
        "accuracy",
        "size KB",
        "gzip KB",
        "p50 ms",
        "p90 ms",
        "init ms",
        "RSS MB",
    )
    lines = []
    for row in rows:
        if row.get("error"):
            continue
        latency = row.get("latency_ms") or {}
        accuracy = row.get("accuracy")
        mark = "*" if (row.get("device") or {}).get("emulated") else ""
        lines.append(
            (
                str(row.get("stage") or Path(row["model"]).name),
                str((row.get("device") or {}).get("name", "local")),
                "-" if accuracy is None else f"{accuracy * 100:.2f}%",
                _fmt(row.get("size_bytes", 0) / 1024, ".1f"),
                _fmt(row.get("size_gzip_bytes", 0) / 1024, ".1f"),
                _fmt(latency.get("p50"), ".3f") + mark,
                _fmt(latency.get("p90"), ".3f") + mark,
                _fmt(row.get("init_ms"), ".1f") + mark,
                _fmt(row.get("peak_rss_mb"), ".1f"),
            )
        )
    widths = [
        max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    if any((row.get("device") or {}).get("emulated") for row in rows):
        out.append("* emulated device (qemu): not a real device latency; use it for accuracy only")
    stateful = sorted({Path(row["model"]).name for row in rows if row.get("stateful")})
    if stateful:
        out.append(
            f"note: {', '.join(stateful)} keep{'s' if len(stateful) == 1 else ''} state between "
            "invocations (resource variables): reset before every sample (a fresh interpreter); "
            "the timed runs carry it over"
        )
    out += agreement_lines(rows)
    return "\n".join(out)


def agreement_lines(rows) -> list[str]:
    """How each model's outputs on other devices compare with its first device's.

    Example:
        >>> agreement_lines(report["results"])  # doctest: +SKIP
        ['outputs vs local:', '  model.tflite on ssh://pi: bit-identical']
    """
    first: dict = {}
    lines = []
    for row in rows:
        if row.get("error") or not row.get("outputs_sha256"):
            continue
        key = (row.get("sha256"), row.get("delegate"))
        base = first.setdefault(key, row)
        if base is row:
            continue
        name = Path(row["model"]).name
        where = (row.get("device") or {}).get("name", "?")
        if row["outputs_sha256"] == base["outputs_sha256"]:
            verdict = "bit-identical"
        elif row.get("predictions_sha256") == base.get("predictions_sha256"):
            verdict = "same top-1 on every sample, raw outputs differ (1)"
        else:
            verdict = "DIFFERENT predictions"
        base_name = (base.get("device") or {}).get("name", "?")
        lines.append(f"  {name} on {where} vs {base_name}: {verdict}")
    if not lines:
        return []
    if any(line.endswith("(1)") for line in lines):
        lines.append(
            "  (1) LiteRT's ARM build computes some int8 ops with other kernels than its x86 build "
            "(SOFTMAX: a 16-bit lookup table instead of a float one), so results can round apart"
        )
    return ["outputs across devices:", *lines]
