"""Measure compression that keeps accuracy: pruning, clustering, QAT and distillation on digits.

The digits reference CNN is trained (``--epochs``, 20 by default) on 1200 of the 1400 training
digits; the other 200 are the validation set every stage keeps its best epoch on. Each stage runs
with its defaults, distilling from the float model, and the result is converted to fully-int8
TFLite. Every ``.tflite`` is then run with the real LiteRT interpreter on the 397 test digits, which
no stage has seen. "tfmot quick-start" rows repeat what tfmot's guides do (a constant schedule or
linear centroids, one short fine-tune on the labels, no distillation) for comparison.

Targets (int8 accuracy on the test digits, gzip size of the ``.tflite``):

- 80 % sparsity + int8: within 1.0 point of float, and >= 8x smaller gzipped than the float32 model;
- 16 clusters + int8: within 1.0 point of float;
- QAT int8: at least float - 0.3 points;
- distilled student with half the parameters (int8): within 1.5 points of the float teacher.

Usage::

    python benchmarks/bench_compression.py                  # table + JSON, exit 1 on a missed target
    python benchmarks/bench_compression.py --seeds 0 1 2    # the same on several seeds

Writes ``benchmarks/results/compression.json`` and ``.md`` (``--out`` to change).
"""

import argparse
import gzip
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

VAL_SIZE = 200


def split(train, seed, size=None):
    """Stratified ``(fit, val)`` split of the training digits (``size`` validation samples)."""
    import numpy as np

    from tfedge.core.data import Dataset

    rng = np.random.default_rng(seed)
    val_index = []
    for label in np.unique(train.y):
        index = np.flatnonzero(train.y == label)
        share = round((size or VAL_SIZE) * len(index) / len(train))
        val_index.extend(rng.choice(index, share, replace=False))
    mask = np.zeros(len(train), bool)
    mask[val_index] = True
    names = train.class_names
    return (
        Dataset(train.x[~mask], train.y[~mask], names, "digits/fit"),
        Dataset(train.x[mask], train.y[mask], names, "digits/val"),
    )


def careless(kind, model, fit):
    """What tfmot's quick-starts do: wrap the whole model, a short fine-tune on the labels."""
    from tfedge.core.backend import keras, tfmot
    from tfedge.models.cloning import clone_model

    mot = tfmot()
    model = clone_model(model)
    if kind == "prune":  # the pruning guide: 50 % -> 80 % over 2 epochs of batch 128
        end_step = math.ceil(len(fit) / 128) * 2
        schedule = mot.sparsity.keras.PolynomialDecay(
            0.5, 0.8, begin_step=0, end_step=end_step, frequency=max(1, end_step // 10)
        )
        wrapped = mot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        learning_rate, epochs, batch = 1e-3, 2, 128
        callbacks = [mot.sparsity.keras.UpdatePruningStep()]
    elif kind == "cluster":
        init = mot.clustering.keras.CentroidInitialization.LINEAR
        wrapped = mot.clustering.keras.cluster_weights(
            model, number_of_clusters=16, cluster_centroids_init=init
        )
        learning_rate, epochs, batch, callbacks = 1e-5, 1, 500, []
    else:
        wrapped = mot.quantization.keras.quantize_model(model)
        learning_rate, epochs, batch, callbacks = 1e-3, 1, 500, []
    wrapped.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    wrapped.fit(fit.x, fit.y, batch_size=batch, epochs=epochs, callbacks=callbacks, verbose=0)
    if kind == "prune":
        return mot.sparsity.keras.strip_pruning(wrapped)
    if kind == "cluster":
        return mot.clustering.keras.strip_clustering(wrapped)
    return wrapped


def stages(teacher):
    """``(name, function(model, fit, val) -> model, convert mode, target)`` for each row."""
    from tfedge.models.clustering import cluster
    from tfedge.models.distillation import distill, make_student
    from tfedge.models.pruning import prune
    from tfedge.models.qat import quantize_aware

    return [
        ("float32", lambda m, t, v: m, "float32", None),
        ("int8 (post-training)", lambda m, t, v: m, "int8", None),
        (
            "prune 80% + int8",
            lambda m, t, v: prune(m, t, v, sparsity=0.8, teacher=teacher),
            "int8",
            {"max_drop": 0.010, "min_ratio": 8.0},
        ),
        (
            "prune 80% + int8, tfmot quick-start",
            lambda m, t, v: careless("prune", m, t),
            "int8",
            None,
        ),
        (
            "cluster 16 + int8",
            lambda m, t, v: cluster(m, t, v, clusters=16, teacher=teacher),
            "int8",
            {"max_drop": 0.010},
        ),
        (
            "cluster 16 + int8, tfmot quick-start",
            lambda m, t, v: careless("cluster", m, t),
            "int8",
            None,
        ),
        (
            "QAT int8",
            lambda m, t, v: quantize_aware(m, t, v, teacher=teacher),
            "int8",
            {"max_drop": 0.003},
        ),
        (
            "QAT int8, tfmot quick-start",
            lambda m, t, v: careless("qat", m, t),
            "int8",
            None,
        ),
        (
            "distilled student, 1/2 params, int8",
            lambda m, t, v: distill(make_student(m, params=0.5), t, v, teacher=teacher),
            "int8",
            {"max_drop": 0.015},
        ),
        (
            "prune 2:4 + int8",
            lambda m, t, v: prune(m, t, v, structure="2:4", teacher=teacher),
            "int8",
            None,
        ),
        (
            "prune 80% + PQAT int8",
            lambda m, t, v: quantize_aware(
                prune(m, t, v, sparsity=0.8, teacher=teacher),
                t,
                v,
                teacher=teacher,
                preserve="sparsity",
            ),
            "int8",
            None,
        ),
        (
            "prune 80% + cluster 16 + PCQAT int8",
            lambda m, t, v: quantize_aware(
                cluster(
                    prune(m, t, v, sparsity=0.8, teacher=teacher),
                    t,
                    v,
                    clusters=16,
                    preserve_sparsity=True,
                    teacher=teacher,
                ),
                t,
                v,
                teacher=teacher,
                preserve="sparsity+clusters",
            ),
            "int8",
            None,
        ),
    ]


def run_seed(seed, args, workdir):
    from tfedge.converters import convert
    from tfedge.core.backend import keras
    from tfedge.core.digits import load_digits
    from tfedge.core.inspector import inspect_model
    from tfedge.devices.runner import bench_models
    from tfedge.models.training import evaluate
    from tfedge.models.zoo import build
    from tfedge.models.zoo import train as fit_zoo

    train, test = load_digits()
    fit, val = split(train, seed)
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)  # the initial weights too, not only the training
    teacher = fit_zoo(build("digits_cnn"), fit, epochs=args.epochs, seed=seed)
    train_s = time.perf_counter() - started
    rows = []
    for name, function, mode, target in stages(teacher):
        if args.only and name != "float32" and not any(word in name for word in args.only):
            continue
        print(f"seed {seed}: {name}...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        model = function(teacher, fit, val)
        seconds = time.perf_counter() - started
        blob = convert(model, mode=mode, calib=fit)
        path = Path(workdir) / f"{seed}_{len(rows)}.tflite"
        path.write_bytes(blob)
        ((kind, result),) = list(
            bench_models([str(path)], data=(test.x, test.y), runs=args.runs, warmup=10)
        )
        if kind != "result":
            raise SystemExit(f"bench failed for {name}: {result}")
        info = inspect_model(blob)
        rows.append(
            {
                "stage": name,
                "seed": seed,
                "params": int(model.count_params()),
                "keras_accuracy": evaluate(model, test),
                "int8_accuracy": result["accuracy"],
                "size_bytes": len(blob),
                "size_gzip_bytes": len(gzip.compress(blob, 9)),
                "fully_integer": info["fully_integer"],
                "weight_sparsity": info["weight_sparsity"],
                "unique_weight_values_max": info["unique_weight_values_max"],
                "seconds": round(seconds, 1),
                "target": target,
                # for benchmarks/report.html (make bench): the latency distribution per stage
                "latency_ms": result["latency_ms"],
                "latencies_ms": result["latencies_ms"],
            }
        )
    float_row = rows[0]
    # On a small model the flatbuffer's own bytes weigh a lot in the float32 file: the ratio
    # against plain post-training int8 shows what the compression itself bought.
    int8_row = next((r for r in rows if r["stage"].startswith("int8")), None)
    for row in rows:
        row["ratio_vs_float_gzip"] = round(float_row["size_gzip_bytes"] / row["size_gzip_bytes"], 2)
        if int8_row is not None:
            row["ratio_vs_int8_gzip"] = round(
                int8_row["size_gzip_bytes"] / row["size_gzip_bytes"], 2
            )
        row["drop_vs_float"] = round(float_row["int8_accuracy"] - row["int8_accuracy"], 4)
        target = row["target"]
        if target is None:
            row["met"] = None
            continue
        met = row["drop_vs_float"] <= target["max_drop"] + 1e-9 and row["fully_integer"]
        if "min_ratio" in target:
            met = met and row["ratio_vs_float_gzip"] >= target["min_ratio"]
        row["met"] = bool(met)
    return rows, train_s, result


def _target_text(target) -> str:
    if target is None:
        return ""
    text = f"drop <= {target['max_drop'] * 100:.1f} pt"
    if "min_ratio" in target:
        text += f", >= {target['min_ratio']:.0f}x"
    return text


def _ratio(group, key) -> str:
    values = [r[key] for r in group if key in r]
    return f"{statistics.mean(values):.1f}x" if values else "-"


def table(rows, seeds, epochs) -> str:
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    lines = [
        f"### Compression that keeps accuracy (digits CNN, {epochs} epochs on 1200 digits; "
        f"accuracy on the 397 test digits with LiteRT; seeds {', '.join(map(str, seeds))})",
        "",
        "| stage | Keras acc | int8 acc | gzip size (bytes) | ratio vs float | ratio vs int8 "
        "| sparsity | max values | fine-tune (s) | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, group in by_stage.items():

        def mean(key, group=group):
            return statistics.mean(r[key] for r in group)

        verdicts = [r["met"] for r in group]
        verdict = "" if verdicts[0] is None else ("yes" if all(verdicts) else "NO")
        lines.append(
            f"| {stage} | {mean('keras_accuracy') * 100:.2f} % | {mean('int8_accuracy') * 100:.2f} % "
            f"| {mean('size_gzip_bytes'):,.0f} | {mean('ratio_vs_float_gzip'):.1f}x "
            f"| {_ratio(group, 'ratio_vs_int8_gzip')} "
            f"| {mean('weight_sparsity') * 100:.0f} % | {max(r['unique_weight_values_max'] for r in group)} "
            f"| {mean('seconds'):.0f} | {_target_text(group[0]['target'])} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the float CNN")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model")
    parser.add_argument("--only", nargs="*", help="run only stages whose name contains a word")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "compression.json")
    )
    args = parser.parse_args(argv)

    from tfedge.version import __version__

    rows, train_seconds = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            seed_rows, train_s, last = run_seed(seed, args, workdir)
            rows.extend(seed_rows)
            train_seconds.append(round(train_s, 1))
    graded = [row for row in rows if row["met"] is not None]
    met = all(row["met"] for row in graded)
    payload = {
        "tfedge_version": __version__,
        "benchmark": "compression",
        "settings": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "fit": "1200 training digits",
            "val": f"{VAL_SIZE} training digits (best-epoch selection)",
            "test": "397 test digits (all accuracies)",
        },
        "device": {
            "machine": platform.machine(),
            "cpu": last["device"].get("cpu"),
            "python": platform.python_version(),
        },
        "runtime": last["runtime"],
        "float_training_seconds": train_seconds,
        "all_targets_met": met,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    text = table(rows, args.seeds, args.epochs)
    text += (
        "\n\nSparsity and max values: zeros and the most distinct values per weight channel in "
        "the int8 model (`tfedge inspect`). Targets are against the float32 model's accuracy: "
        f"**{'all met' if met else 'not all met'}**."
    )
    out.with_suffix(".md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
