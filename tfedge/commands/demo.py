"""``tfedge demo``: the whole path on the bundled digits, in about a minute on 2 cores.

Trains the digits reference CNN, converts it to float32 and fully-int8 TFLite, compresses it (80 %
pruning then quantization-aware training, distilling from the float model), benches the three in
one run on this machine, and writes ``report.json`` and ``report.html``. The stages keep their best
epoch on a validation split of the training images; accuracy is reported on the 397 test images.

Example:
    >>> report = run_demo("demo-out")  # doctest: +SKIP
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
from pathlib import Path

import numpy as np

from tfedge.commands.bench import bench, format_results, write_results
from tfedge.converters import convert
from tfedge.core.console import echo, progress
from tfedge.core.data import Dataset
from tfedge.core.digits import load_digits
from tfedge.core.files import save_atomically, write_atomically
from tfedge.devices.runner import DEFAULT_RUNS
from tfedge.reports.page import write_html

__all__ = ["run_demo"]


def run_demo(
    out_dir="tfedge-demo", epochs: int = 10, runs: int = DEFAULT_RUNS, compress: bool = True
) -> dict:
    """Run the demo pipeline and return the report (also written to ``out_dir``)."""
    from tfedge.models.zoo import build, train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_data, test_data = load_digits()
    test_npz = test_data.save(out / "digits_test.npz")
    echo(f"digits: {len(train_data)} training and {len(test_data)} test images (16x16, real data)")

    steps = progress(total=5 if compress else 4, desc="demo", unit="step", leave=False)
    model = train(build("digits_cnn"), train_data, epochs=epochs)
    save_atomically(model, out / "model.keras")
    keras_accuracy = {"float32": _accuracy(model, test_data)}
    keras_accuracy["int8"] = keras_accuracy["float32"]
    steps.update(1)
    paths = {}
    for mode in ("float32", "int8"):
        path = out / f"digits_{mode}.tflite"
        write_atomically(path, convert(model, mode=mode, calib=train_data))
        paths[mode] = path
        steps.update(1)
    if compress:
        from tfedge.models.pruning import prune
        from tfedge.models.qat import quantize_aware

        fit_data, val_data = _split(train_data, 200)
        echo(
            "compressing: 80 % pruning, then quantization-aware training (distilled from the float model)"
        )
        small = prune(model, fit_data, val_data, sparsity=0.8, teacher=model)
        small = quantize_aware(
            small, fit_data, val_data, preserve="sparsity", teacher=model, epochs=3
        )
        save_atomically(small, out / "model_pruned_qat.keras")
        stage = "pruned 80% + QAT int8"
        paths[stage] = out / "digits_pruned_qat_int8.tflite"
        write_atomically(paths[stage], convert(small, calib=train_data))
        keras_accuracy[stage] = _accuracy(small, test_data)
        steps.update(1)
    report = bench(list(paths.values()), data=test_npz, runs=runs)
    steps.update(1)
    steps.close()
    for row, stage in zip(report["results"], paths, strict=True):
        row["stage"] = stage
        row["keras_accuracy"] = keras_accuracy[stage]
    write_results(out / "report.json", report["results"])
    write_html(out / "report.html", report["results"], title="tfedge demo: digits CNN")

    echo(f"Keras float model: {keras_accuracy['float32'] * 100:.2f}% on the test images")
    echo(format_results(report["results"]))
    rows = {row["stage"]: row for row in report["results"]}
    if {"float32", "int8"} <= rows.keys():
        f32, i8 = rows["float32"], rows["int8"]
        echo(
            f"\nint8 is {f32['size_bytes'] / i8['size_bytes']:.1f}x smaller and "
            f"{f32['latency_ms']['p50'] / i8['latency_ms']['p50']:.2f}x the speed of float32 "
            f"(p50), accuracy {(i8['accuracy'] - f32['accuracy']) * 100:+.2f} points"
        )
    compressed = rows.get("pruned 80% + QAT int8")
    if compressed and "float32" in rows:
        f32 = rows["float32"]
        echo(
            f"pruned + QAT int8 is {f32['size_gzip_bytes'] / compressed['size_gzip_bytes']:.1f}x smaller "
            f"gzipped than float32, accuracy {(compressed['accuracy'] - f32['accuracy']) * 100:+.2f} points"
        )
    echo(f"report: {out / 'report.json'} and {out / 'report.html'}")
    return report


def _accuracy(model, data) -> float:
    return float((model.predict(data.x, verbose=0).argmax(axis=-1) == data.y).mean())


def _split(data, count: int):
    """The training data less ``count`` samples, and those samples (a seeded random choice)."""

    index = np.random.default_rng(0).permutation(len(data))
    held, kept = index[:count], index[count:]
    return (
        Dataset(data.x[kept], data.y[kept], data.class_names, data.source),
        Dataset(data.x[held], data.y[held], data.class_names, data.source),
    )
