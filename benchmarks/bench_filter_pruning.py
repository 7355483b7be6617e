"""Measure filter pruning's int8 speed-up and accuracy on the zoo (digits, one interpreter thread).

For each zoo model: train it, convert it fully-int8, prune ``--ratio`` of its filters (distilling
from the unpruned model while fine-tuning), convert again, then bench both ``.tflite`` files in this
one process, alternating, ``--rounds`` times, and report the medians of their p50 latencies.
The acceptance bar, on a compute-bound model (unpruned int8 p50 >= 100 us): speed-up >= 1.6x and
int8 accuracy within 1.5 points of the unpruned int8 model.

Usage::

    python benchmarks/bench_filter_pruning.py                       # the zoo, table + JSON
    python benchmarks/bench_filter_pruning.py --models resnet8_32 --criterion taylor

Writes ``benchmarks/results/filter_pruning.json`` and ``.md`` (``--out`` to change) and prints the
markdown table; exits 1 when a compute-bound model misses the target.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ("resnet8_32", "resnet8", "ds_cnn", "mobilenet")
COMPUTE_BOUND_MS = 0.1
MIN_SPEEDUP = 1.6
MAX_ACCURACY_DROP = 0.015


def measure(name, args, train, test, workdir):
    from tfedge.converters import convert
    from tfedge.models.filter_pruning import prune_filters
    from tfedge.models.zoo import build
    from tfedge.models.zoo import train as fit

    start = time.perf_counter()
    model = fit(build(name), train, epochs=args.epochs, seed=args.seed)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pruned = prune_filters(
        model,
        train,
        None,
        ratio=args.ratio,
        criterion=args.criterion,
        epochs=args.finetune_epochs,
        teacher=model,
        round_to=args.round_to,
    )
    prune_s = time.perf_counter() - start
    paths = {}
    for label, keras_model in (("unpruned", model), ("pruned", pruned)):
        path = Path(workdir) / f"{name}_{label}_int8.tflite"
        path.write_bytes(convert(keras_model, calib=train))
        paths[label] = path
    float_acc = {
        label: float((m.predict(test.x, verbose=0).argmax(-1) == test.y).mean())
        for label, m in (("unpruned", model), ("pruned", pruned))
    }
    return model, pruned, paths, float_acc, train_s, prune_s


def bench(paths, test, runs, warmup, rounds):
    from tfedge.devices.runner import bench_models

    p50 = {label: [] for label in paths}
    last = {}
    for _ in range(rounds):
        rows = bench_models(
            [str(p) for p in paths.values()],
            names=list(paths),
            data=(test.x, test.y),
            threads=1,
            runs=runs,
            warmup=warmup,
        )
        for kind, row in rows:
            if kind != "result":
                raise SystemExit(f"bench failed: {row}")
            p50[row["model"]].append(row["latency_ms"]["p50"])
            last[row["model"]] = row
    return {label: statistics.median(values) for label, values in p50.items()}, p50, last


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l1", choices=("l1", "l2", "taylor"))
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the zoo model")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="alternating bench rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "filter_pruning.json")
    )
    args = parser.parse_args(argv)

    from tfedge.core.digits import load_digits
    from tfedge.version import __version__

    train, test = load_digits()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            print(f"{name}: training, pruning, converting...", file=sys.stderr, flush=True)
            model, pruned, paths, float_acc, train_s, prune_s = measure(
                name, args, train, test, workdir
            )
            medians, all_p50, last = bench(paths, test, args.runs, args.warmup, args.rounds)
            base, small = last["unpruned"], last["pruned"]
            speedup = medians["unpruned"] / medians["pruned"]
            drop = base["accuracy"] - small["accuracy"]
            compute_bound = medians["unpruned"] >= COMPUTE_BOUND_MS
            rows.append(
                {
                    "model": name,
                    "ratio": args.ratio,
                    "criterion": args.criterion,
                    "params": {"unpruned": model.count_params(), "pruned": pruned.count_params()},
                    "float_accuracy": float_acc,
                    "int8_accuracy": {"unpruned": base["accuracy"], "pruned": small["accuracy"]},
                    "int8_size_bytes": {
                        "unpruned": base["size_bytes"],
                        "pruned": small["size_bytes"],
                    },
                    "int8_p50_ms": medians,
                    "int8_p50_ms_per_round": all_p50,
                    "speedup": round(speedup, 3),
                    "accuracy_drop": round(drop, 4),
                    "compute_bound": compute_bound,
                    "passes": bool(
                        compute_bound and speedup >= MIN_SPEEDUP and drop <= MAX_ACCURACY_DROP
                    )
                    if compute_bound
                    else None,
                    "train_s": round(train_s, 1),
                    "prune_and_finetune_s": round(prune_s, 1),
                }
            )
    payload = {
        "tfedge_version": __version__,
        "benchmark": "filter_pruning",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "models")},
        "device": {"machine": platform.machine(), "cpu": base["device"].get("cpu"), "threads": 1},
        "runtime": base["runtime"],
        "criteria": {
            "compute_bound_p50_ms": COMPUTE_BOUND_MS,
            "min_speedup": MIN_SPEEDUP,
            "max_accuracy_drop": MAX_ACCURACY_DROP,
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")

    lines = [
        f"### Filter pruning {args.ratio:.0%} ({args.criterion}) + int8 vs unpruned int8 "
        f"(1 thread, medians of {args.rounds} alternating rounds of {args.runs} runs)",
        "",
        "| model | params | int8 size (bytes) | int8 p50 (us) | speed-up | int8 accuracy | "
        "float accuracy | compute-bound | passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p, s, t = row["params"], row["int8_size_bytes"], row["int8_p50_ms"]
        a, f = row["int8_accuracy"], row["float_accuracy"]
        verdict = {True: "yes", False: "NO", None: "n/a"}[row["passes"]]
        lines.append(
            f"| {row['model']} | {p['unpruned']} -> {p['pruned']} | {s['unpruned']} -> {s['pruned']} "
            f"| {t['unpruned'] * 1000:.1f} -> {t['pruned'] * 1000:.1f} | {row['speedup']:.2f}x "
            f"| {a['unpruned']:.4f} -> {a['pruned']:.4f} | {f['unpruned']:.4f} -> {f['pruned']:.4f} "
            f"| {'yes' if row['compute_bound'] else 'no'} | {verdict} |"
        )
    graded = [row for row in rows if row["passes"] is not None]
    met = bool(graded) and all(row["passes"] for row in graded)
    lines += [
        "",
        f"Target: on compute-bound models (unpruned int8 p50 >= {COMPUTE_BOUND_MS * 1000:.0f} us), "
        f"speed-up >= {MIN_SPEEDUP}x and int8 accuracy within {MAX_ACCURACY_DROP * 100:.1f} points: "
        f"**{'met' if met else 'not met'}**.",
    ]
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0 if met or not graded else 1


if __name__ == "__main__":
    sys.exit(main())
