"""Per-layer int16 activations and int4 weights against plain int8 (LiteRT, 1 thread).

1. A digits model (8x8 inputs) with one sensitive layer: after training, one unit of the dense
   layer ``sensitive`` gets a +2000 bias (always on) and the next layer ignores it, so the float
   model computes the same thing but int8 gives that output one scale for a 2000-wide range.
   Compared: float32, int8, ``--int16 sensitive`` (mixed int8/int16x8), whole-model int16x8.
2. The digits reference CNN (16x16, 10 epochs) and ResNet-8 with int8 weights and ``--weights
   int4``: size, gzip size, accuracy, p50.

p50 is the median over ROUNDS alternating rounds of RUNS runs. Writes
benchmarks/results/mixed_precision.json and benchmarks/results/mixed_precision.md.
"""

import json
import statistics
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS = 5
RUNS = 300


def sensitive_model(train):
    from tfedge.core.backend import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, activation="relu", name="conv"),
            layers.Flatten(name="flat"),
            layers.Dense(32, activation="relu", name="sensitive"),
            layers.Dense(10, name="logits"),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    model.fit(train.x, train.y, epochs=15, batch_size=32, verbose=0)
    kernel, bias = model.get_layer("sensitive").get_weights()
    bias[0] += 2000.0
    model.get_layer("sensitive").set_weights([kernel, bias])
    weights, out_bias = model.get_layer("logits").get_weights()
    weights[0] = 0.0
    model.get_layer("logits").set_weights([weights, out_bias])
    for name in ("conv", "sensitive"):
        model.get_layer(name).trainable = False
    model.compile("adam", loss)
    model.fit(train.x, train.y, epochs=3, batch_size=32, verbose=0)
    return model


def measure(models: dict, test, tmp: Path) -> list[dict]:
    """Accuracy, sizes and the median p50 of alternating rounds for each ``name: blob``."""
    from tfedge.core.inspector import inspect_model
    from tfedge.devices.runner import bench_models

    paths = {}
    for name, blob in models.items():
        paths[name] = tmp / f"{name.replace(' ', '_').replace(':', '_')}.tflite"
        paths[name].write_bytes(blob)
    p50s = {name: [] for name in models}
    first = {}
    for _ in range(ROUNDS):
        for name, path in paths.items():
            ((kind, row),) = list(bench_models([str(path)], data=(test.x, test.y), runs=RUNS))
            assert kind == "result", row
            first.setdefault(name, row)
            p50s[name].append(row["latency_ms"]["p50"])
    rows = []
    for name, row in first.items():
        info = inspect_model(paths[name])
        rows.append(
            {
                "model": name,
                "accuracy": row["accuracy"],
                "size_bytes": row["size_bytes"],
                "size_gzip_bytes": row["size_gzip_bytes"],
                "p50_ms": round(statistics.median(p50s[name]), 4),
                "fully_integer": info["fully_integer"],
                "edgetpu_compatible": info["edgetpu"]["compatible"],
            }
        )
    return rows


def main() -> int:
    from tfedge.converters import convert
    from tfedge.core.digits import load_digits
    from tfedge.models.zoo import build, train

    RESULTS.mkdir(exist_ok=True)
    small_train, small_test = load_digits(size=8)
    sensitive = sensitive_model(small_train)
    mixed = {
        "float32": convert(sensitive, mode="float32"),
        "int8": convert(sensitive, calib=small_train),
        "int16: sensitive": convert(sensitive, calib=small_train, int16=["sensitive"]),
        "int16x8 (whole model)": convert(sensitive, mode="int16x8", calib=small_train),
    }
    digits_train, digits_test = load_digits()
    weights = {}
    for name in ("digits_cnn", "resnet8"):
        model = train(build(name), digits_train, epochs=10)
        weights[f"{name} int8"] = convert(model, calib=digits_train)
        weights[f"{name} int4 weights"] = convert(model, calib=digits_train, weights="int4")
    with tempfile.TemporaryDirectory() as tmp:
        sensitive_rows = measure(mixed, small_test, Path(tmp))
        int4_rows = measure(weights, digits_test, Path(tmp))
    payload = {"sensitive_layer": sensitive_rows, "int4": int4_rows, "rounds": ROUNDS, "runs": RUNS}
    (RESULTS / "mixed_precision.json").write_text(json.dumps(payload, indent=2) + "\n")

    def table(rows):
        lines = [
            "| model | accuracy | size (bytes) | gzip (bytes) | p50 (ms) | fully integer | EdgeTPU |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['accuracy'] * 100:.2f} % | {r['size_bytes']:,} | "
                f"{r['size_gzip_bytes']:,} | {r['p50_ms']:.4f} | "
                f"{'yes' if r['fully_integer'] else 'no'} | "
                f"{'yes' if r['edgetpu_compatible'] else 'no'} |"
            )
        return "\n".join(lines)

    md = (
        "### One sensitive layer: int8 vs `--int16 LAYER` vs whole-model int16x8 "
        f"(8x8 digits, 397 test digits, medians of {ROUNDS} alternating rounds of {RUNS} runs)\n\n"
        + table(sensitive_rows)
        + "\n\n### `--weights int4` vs int8 (16x16 digits, 10 epochs)\n\n"
        + table(int4_rows)
        + "\n"
    )
    (RESULTS / "mixed_precision.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
