"""Measure the reference zoo and rewrite ``models/expected.json`` (the figures its tests check).

Usage: python benchmarks/measure_zoo.py [NAME ...] [--runs N]
"""

import json
import sys
import tempfile
from pathlib import Path

from tfedge.converters import convert
from tfedge.core.digits import load_digits
from tfedge.devices.runner import bench_models
from tfedge.models import zoo


def measure(name: str, runs: int = 300, seed: int = 0) -> dict:
    """Train a zoo model as its recipe says, convert it fully-int8 and bench it (1 thread, here).

    Returns the figures of ``models/expected.json``: ``float_accuracy``, ``int8_accuracy`` (on the
    397 test digits), ``int8_size_bytes`` and ``int8_p50_ms``.

    Example:
        >>> measure("digits_cnn")["int8_size_bytes"]  # doctest: +SKIP
        45232
    """
    train_data, test = load_digits()
    model = zoo.train(zoo.build(name), train_data, seed=seed, **zoo.train_settings(name))
    float_accuracy = float((model.predict(test.x, verbose=0).argmax(-1) == test.y).mean())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.tflite"
        path.write_bytes(convert(model, calib=train_data))
        rows = list(bench_models([str(path)], data=(test.x, test.y), threads=1, runs=runs))
    kind, row = rows[0]
    if kind != "result":
        raise RuntimeError(f"bench of {name} failed: {row}")
    return {
        "float_accuracy": round(float_accuracy, 4),
        "int8_accuracy": round(float(row["accuracy"]), 4),
        "int8_size_bytes": int(row["size_bytes"]),
        "int8_p50_ms": round(float(row["latency_ms"]["p50"]), 4),
        "params": int(model.count_params()),
        "tolerance": {"accuracy": 0.02, "size": 0.1, "latency": 0.5},
        "measured_on": row["device"].get("cpu"),
    }


def main(argv=None) -> int:
    """``python benchmarks/measure_zoo.py [NAME ...]``: measure zoo models, rewrite expected.json."""
    import argparse

    parser = argparse.ArgumentParser(description="Measure zoo models; update models/expected.json")
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    path = zoo.HERE / "expected.json"
    figures = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.names or list(zoo.ZOO):
        entry = measure(name, runs=args.runs)
        figures[name] = entry
        print(name, json.dumps(entry))
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
