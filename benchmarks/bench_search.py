"""Measure ``tfedge optimize --auto``: does the search beat the best hand-written recipes?

Two searches, each on a reference trained here (seed 0) on 1000 of the 1400 training digits, with
the other 400 as ``--val`` (the search measures on half of it and confirms its choice on the other
half), and the 397 test digits held out:

- **size**: the digits CNN (20 epochs), tolerance 1 point, objective size, a 15-minute budget.
  Target: the result is at least as small gzipped as the best hand recipe (prune 80 % + cluster
  16 + PCQAT, the README's 13.0x row), measured in the same run (it is one of the seeds), and
  within the tolerance of the float model on the validation digits.
- **latency**: the zoo's compute-bound ``resnet8_32``, tolerance 1 point, objective latency
  (local, one thread), a 10-minute budget. Target: at least as fast (p50) as 50 % filter pruning
  (l1), also measured in the same run, within the tolerance.

The held-out test accuracy of each result is reported next to the float model's.

Usage::

    python benchmarks/bench_search.py                       # both, table + JSON
    python benchmarks/bench_search.py --only size --size-budget 5

Writes ``benchmarks/results/search.json`` and ``.md`` (``--out`` to change); exits 1 on a missed
target.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
# Half of --val confirms the choice: 200 held-back digits resolve a one-point tolerance to two
# samples, and the confirmation's margin (one paired standard error) to about a point.
VAL_SIZE = 400


def split(train, seed, size):
    sys.path.insert(0, str(HERE))
    from bench_compression import split as stratified

    return stratified(train, seed, size)


def test_accuracy(path, test) -> float:
    from tfedge.devices.runner import bench_models

    ((kind, row),) = list(bench_models([str(path)], data=(test.x, test.y), warmup=0, runs=1))
    if kind != "result":
        raise SystemExit(f"cannot run {path}: {row}")
    return row["accuracy"]


def find(result, choices):
    """The candidate of ``result`` whose recipe is the hand recipe ``choices``."""
    from tfedge.models.search import recipe_from_choices, recipe_key

    key = recipe_key(recipe_from_choices(choices))
    for candidate in result.candidates:
        if recipe_key(candidate["recipe"]) == key:
            return candidate
    return None


def run(kind, args, workdir):
    import tfedge
    from tfedge.converters import convert
    from tfedge.core.digits import load_digits
    from tfedge.models.zoo import build
    from tfedge.models.zoo import train as fit_zoo

    name, objective, budget, hand, hand_label = {
        "size": (
            "digits_cnn",
            "size",
            args.size_budget,
            {"prune": 0.8, "cluster": 16, "qat": True},
            "prune 80% + cluster 16 + PCQAT",
        ),
        "latency": (
            "resnet8_32",
            "latency",
            args.latency_budget,
            {"prune_filters": 0.5},
            "filter pruning 50% (l1)",
        ),
    }[kind]
    train, test = load_digits()
    fit, val = split(train, SEED, args.val_size)
    folder = Path(workdir) / kind
    folder.mkdir(parents=True)
    started = time.perf_counter()
    model = fit_zoo(build(name), fit, epochs=args.epochs, seed=SEED)
    train_s = time.perf_counter() - started
    model_path = folder / f"{name}.keras"
    model.save(model_path)
    float_path = folder / "float32.tflite"
    float_path.write_bytes(convert(model, mode="float32"))
    started = time.perf_counter()
    result = tfedge.auto_optimize(
        str(model_path),
        fit.save(folder / "fit.npz"),
        val.save(folder / "val.npz"),
        out_dir=folder / "out",
        tolerance=args.tolerance,
        objective=objective,
        budget_minutes=budget,
        runs=args.runs,
        fidelity=args.fidelity,
    )
    search_s = time.perf_counter() - started
    best = result.best
    reference = find(result, hand)
    measure = "size_gzip_bytes" if objective == "size" else None

    def value(candidate):
        if candidate is None or not candidate.get("figures"):
            return None
        figures = candidate["figures"]
        return figures[measure] if measure else figures["latency_ms"]["p50"]

    best_value, hand_value = value(best), value(reference)
    failed = [c for c in result.candidates if c["state"] == "fail"]
    failures = {}
    for candidate in failed:
        error = str(candidate.get("error") or "no error recorded")
        failures[error] = failures.get(error, 0) + 1
    met = (
        best is not None
        and best["within_tolerance"]
        and hand_value is not None
        and best_value <= hand_value
    )
    return {
        "search": kind,
        "fidelity": args.fidelity,
        "model": name,
        "objective": objective,
        "tolerance": args.tolerance,
        "val_size": len(val),
        "budget_minutes": budget,
        "train_s": round(train_s, 1),
        "search_s": round(search_s, 1),
        "candidates": len(result.candidates),
        "failed": len(failed),
        "failures": failures,
        "stopped": result.stopped,
        "best_recipe": None if best is None else best["label"],
        "best_trial": None if best is None else best["trial"],
        "float_val_accuracy": result.reference_accuracy,
        "best_val_accuracy": None if best is None else best["figures"]["accuracy"],
        "float_test_accuracy": test_accuracy(float_path, test),
        "best_test_accuracy": test_accuracy(folder / "out" / "model.tflite", test),
        "best_value": best_value,
        "hand_recipe": hand_label,
        "hand_value": hand_value,
        "hand_within_tolerance": None if reference is None else reference["within_tolerance"],
        "float_gzip_bytes": result.reference.get("size_gzip_bytes"),
        "ptq_gzip_bytes": ((find(result, {}) or {}).get("figures") or {}).get("size_gzip_bytes"),
        "best_confirm_accuracy": None if best is None else best.get("confirm_accuracy"),
        "confirmation": result.extra.get("confirmation"),
        "met": bool(met),
    }


def table(rows, missing=None) -> str:
    missing = missing or {}
    val_size = (rows[0].get("val_size") if rows else None) or VAL_SIZE
    held = ((rows[0].get("confirmation") or {}).get("samples") if rows else None) or val_size // 2
    lines = [
        f"### `optimize --auto` against the best hand recipe (seed 0; of the {val_size} validation "
        f"digits the search uses {val_size - held} and the other {held} confirm its choice; test "
        "accuracy on the 397 held-out digits)",
        "",
        "| objective | model | best recipe found | candidates | search (s) | float val / test acc "
        "| result val / test acc | result | best hand recipe | hand | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        unit = (
            (lambda v: f"{v:,} B gzip")
            if row["objective"] == "size"
            else (lambda v: f"{v * 1000:.1f} us p50")
        )
        show = lambda v, unit=unit: "-" if v is None else unit(v)  # noqa: E731
        lines.append(
            f"| {row['objective']} | {row['model']} | {row['best_recipe']} | {row['candidates']}"
            + (f" ({row['failed']} failed)" if row.get("failed") else "")
            + " "
            f"| {row['search_s']:.0f} | {row['float_val_accuracy'] * 100:.2f} % / "
            f"{row['float_test_accuracy'] * 100:.2f} % | "
            f"{_pct(row['best_val_accuracy'])} / {_pct(row['best_test_accuracy'])} | "
            f"{show(row['best_value'])} | {row['hand_recipe']} | {show(row['hand_value'])} | "
            f"{'yes' if row['met'] else 'NO'} |"
        )
    size = next((r for r in rows if r["objective"] == "size"), None)
    if size and size.get("float_gzip_bytes") and size.get("best_value"):
        lines += [
            "",
            f"Size search: {size['float_gzip_bytes'] / size['best_value']:.1f}x smaller gzipped "
            "than the float32 model.",
        ]
    for row in rows:
        for error, count in (row.get("failures") or {}).items():
            lines += ["", f"{row['objective']} search, {count} failed candidate(s): {error}"]
    for kind, status in missing.items():
        lines += [
            "",
            f"The {kind} search gave no result: its process ended with {status} in both tries.",
        ]
    met = not missing and all(r["met"] for r in rows)
    lines += [
        "",
        "Targets: at least as small (size) or as fast (latency) as the best hand recipe, within "
        f"the tolerance: **{'met' if met else 'NOT met'}**.",
    ]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _run_isolated(kind, passed):
    """One search in a child process, tried twice: ``(row, None)`` or ``(None, how it ended)``.

    The search runs its fine-tunes in processes of their own, but the reference training here and
    the conversions run in this one; a native crash there ends the try, not the benchmark."""
    import subprocess

    from tfedge.commands.stage_worker import describe_exit

    status = None
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="tfedge-bench-search-row-") as out:
            argv = [sys.executable, __file__, *passed, "--only", kind, "--out", out]
            status = subprocess.run(argv).returncode
            rows_file = Path(out) / "search.json"
            if rows_file.is_file():
                return json.loads(rows_file.read_text())["rows"][0], None
            print(
                f"== search: {kind}: attempt {attempt} ended with {describe_exit(status)}",
                file=sys.stderr,
            )
    return None, describe_exit(status)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["size", "latency"])
    parser.add_argument("--size-budget", type=float, default=15.0, help="minutes")
    parser.add_argument("--latency-budget", type=float, default=10.0, help="minutes")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=20, help="reference training epochs")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per candidate")
    parser.add_argument(
        "--fidelity",
        choices=["full", "multi"],
        default="full",
        help="multi: screen candidates briefly first (compare search_s and the result with full)",
    )
    parser.add_argument(
        "--val-size", type=int, default=VAL_SIZE, help="validation digits (half confirm)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    rows, missing = [], {}
    if args.only:
        with tempfile.TemporaryDirectory(prefix="tfedge-bench-search-") as workdir:
            print(f"== search: {args.only}", file=sys.stderr, flush=True)
            rows.append(run(args.only, args, workdir))
    else:
        for kind in ("size", "latency"):
            row, ended = _run_isolated(kind, sys.argv[1:] if argv is None else argv)
            if row is not None:
                rows.append(row)
            else:
                missing[kind] = ended
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "rows": rows,
        "missing": missing,
    }
    (args.out / "search.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = table(rows, missing)
    (args.out / "search.md").write_text(text + "\n")
    print(text)
    return 0 if len(rows) == (1 if args.only else 2) and all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
