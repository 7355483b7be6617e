"""``tfedge optimize --auto --fidelity multi`` on a real-size model: how many candidates in an hour.

The zoo's ``vww_mobilenet`` (MobileNetV1 alpha 0.25 at 96x96x3, 2 classes, MLPerf Tiny's person
detection) on 20,000 synthetic training images in TFRecord shards and 2,000 validation images
(half of them confirm the choice), all generated on disk here. The task is learnable, so accuracy
and the tolerance mean something: every image is JPEG noise with one bright shape at a random
place and size, a filled square (class 0) or a filled disk (class 1). The float model is trained
here (3 epochs, streamed), then one whole command runs under ``/usr/bin/time -f %M``::

    tfedge optimize vww.keras --train 'shards/*.tfrecord' --val 'val/*.tfrecord' --auto \\
        --objective size --tolerance 0.02 --fidelity multi --epochs 1 --budget-minutes 60

Target (issue "real scale", item 4): at least 20 candidates evaluated in the 60-minute budget on
2 cores, and the Pareto set reported. A candidate counts as evaluated when it was converted and
measured, at the screen's fidelity or the full one (the report's ``fidelity`` column says which).

Usage: python benchmarks/bench_search_scale.py [--samples 20000] [--budget-minutes 60]
       [--trials N] [--keep DIR]

Writes benchmarks/results/search_scale.{json,md}; exits 1 on a missed target.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPE = (96, 96, 3)
SHARD_SIZE = 1000
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
TARGET_CANDIDATES = 20


def shape_image(rng, label: int) -> np.ndarray:
    """JPEG-able uint8 noise with one bright filled square (0) or disk (1) somewhere."""
    height, width, _ = SHAPE
    image = rng.integers(0, 110, SHAPE, dtype=np.uint8)
    size = int(rng.integers(14, 40))
    top, left = (int(v) for v in rng.integers(0, height - size, 2))
    rows, cols = np.ogrid[:size, :size]
    if label == 0:
        mask = np.ones((size, size), bool)
    else:
        centre = (size - 1) / 2
        mask = (rows - centre) ** 2 + (cols - centre) ** 2 <= (size / 2) ** 2
    colour = rng.integers(150, 256, 3, dtype=np.uint8)
    patch = image[top : top + size, left : left + size]
    patch[mask] = colour
    return image


def write_shards(folder: Path, count: int, seed: int, prefix: str) -> str:
    """``count`` labelled images as TFRecord shards (``image/encoded``, ``image/class/label``)."""
    from tfedge.core.backend import tf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = None
    for i in range(count):
        if i % SHARD_SIZE == 0:
            if writer is not None:
                writer.close()
            writer = tf.io.TFRecordWriter(str(folder / f"{prefix}-{i // SHARD_SIZE:05d}.tfrecord"))
        label = int(rng.integers(0, 2))
        jpeg = tf.io.encode_jpeg(shape_image(rng, label), quality=90).numpy()
        feature = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writer.write(example.SerializeToString())
    writer.close()
    return f"{folder}/*.tfrecord"


def train_float(train: str, val: str, path: Path, epochs: int) -> dict:
    """The float reference, trained from the streamed shards; returns its figures."""
    from tfedge.core.backend import keras
    from tfedge.core.streams import stream_data
    from tfedge.models.training import fit
    from tfedge.models.zoo import REFERENCE

    model = REFERENCE["vww_mobilenet"]()
    shape = tuple(model.input_shape[1:])
    train_stream = stream_data(train, input_shape=shape, require_labels=True, name="--train")
    val_stream = stream_data(val, input_shape=shape, require_labels=True, name="--val")
    started = time.perf_counter()
    best = fit(model, train_stream, val_stream, epochs=epochs, learning_rate=2e-3, seed=0)
    seconds = time.perf_counter() - started
    keras.models.save_model(model, path)
    return {
        "float_train_s": round(seconds, 1),
        "float_epochs": epochs,
        "float_val_accuracy": round(float(best.best), 4),
        "parameters": int(model.count_params()),
    }


def run_search(model: Path, train: str, val: str, out: Path, args) -> dict:
    command = [
        *("/usr/bin/time", "-f", "%M %e"),
        *(sys.executable, "-m", "tfedge", "optimize", str(model)),
        *("--train", train, "--val", val, "--auto", "--objective", "size"),
        *("--tolerance", str(args.tolerance), "--fidelity", "multi", "--epochs", "1"),
        *("--budget-minutes", str(args.budget_minutes), "-o", str(out)),
        *(("--trials", str(args.trials)) if args.trials else ()),
    ]
    print("==", " ".join(command[3:]), file=sys.stderr, flush=True)
    done = subprocess.run(command, env=ENV, stderr=subprocess.PIPE, text=True)
    tail = done.stderr.strip().splitlines()
    rss_kb, wall = (tail[-1].split() + ["0", "0"])[:2] if tail else ("0", "0")
    report_file = out / "report.json"
    if not report_file.is_file():
        raise SystemExit(f"the search wrote no report (exit {done.returncode}): {tail[-5:]}")
    return {
        "exit": done.returncode,
        "wall_s": float(wall),
        "peak_rss_mb": round(int(rss_kb) / 1024),
        "report": json.loads(report_file.read_text()),
    }


def summarize(report: dict) -> dict:
    """Candidates, their fidelity and the Pareto set from the search's ``report.json``.

    A candidate is evaluated when it was converted and measured: fully (``complete``), or by
    its screen only (``pruned`` with the screen's figures). Failed ones (a stage that cannot
    apply, or a recipe that starts like a failed one and was skipped unrun) are not.
    """
    rows = [r for r in report["results"] if r.get("trial") is not None]
    full = [r for r in rows if r.get("state") == "complete" and r.get("accuracy") is not None]
    screened_out = [
        r for r in rows if r.get("state") == "pruned" and r.get("screen_accuracy") is not None
    ]
    failed = [r for r in rows if r.get("state") == "fail"]
    pareto = sorted((r for r in full if r.get("pareto")), key=lambda r: r["size_gzip_bytes"])
    chosen = next((r for r in rows if r.get("chosen")), None)
    search = report.get("search", {})

    def brief(row):
        return {
            "trial": row["trial"],
            "recipe": row.get("stage"),
            "fidelity": row.get("fidelity"),
            "int8_accuracy": row.get("accuracy"),
            "gzip_bytes": row.get("size_gzip_bytes"),
            "within_tolerance": row.get("within_tolerance"),
            "seconds": row.get("seconds"),
        }

    errors = {}
    for row in failed:
        error = str(row.get("error") or row.get("pruned") or "no error recorded")[:160]
        errors[error] = errors.get(error, 0) + 1
    return {
        "candidates": len(rows),
        "evaluated": len(full) + len(screened_out),
        "full_fidelity": len(full),
        "screened_out": len(screened_out),
        "failed": len(failed),
        "failures": errors,
        "stopped": search.get("stopped"),
        "pareto": [brief(r) for r in pareto],
        "chosen": None if chosen is None else brief(chosen),
        "screens": [
            {
                "trial": r["trial"],
                "recipe": r.get("stage"),
                "screen_accuracy": r.get("screen_accuracy"),
                "screen_gzip_bytes": r.get("screen_size_gzip_bytes"),
                "promoted": r.get("state") != "pruned",
            }
            for r in rows
            if r.get("screen_accuracy") is not None
        ],
        "float_gzip_bytes": next(
            (r.get("size_gzip_bytes") for r in report["results"] if r.get("trial") is None), None
        ),
    }


def table(row: dict) -> str:
    lines = [
        "### `optimize --auto --fidelity multi` on MobileNetV1 0.25 at 96x96x3 "
        f"({row['samples']:,} streamed training images, {row['val_samples']:,} validation; "
        f"one run, {row['machine']})",
        "",
        "| budget | wall time | peak RSS | candidates | evaluated (full / screened out) | failed "
        "| stopped | chosen | target (>= 20 evaluated in the budget) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    chosen = row["chosen"]
    chosen_text = (
        "-"
        if chosen is None
        else f"{chosen['recipe']}: {chosen['gzip_bytes']:,} B gzip, int8 "
        f"{chosen['int8_accuracy'] * 100:.2f} %"
    )
    lines.append(
        f"| {row['budget_minutes']:g} min | {row['wall_s'] / 60:.1f} min | "
        f"{row['peak_rss_mb']:,} MB | {row['candidates']} | {row['evaluated']} "
        f"({row['full_fidelity']} / {row['screened_out']}) | {row['failed']} | {row['stopped']} "
        f"| {chosen_text} | {'met' if row['met'] else 'NOT met'} |"
    )
    lines += [
        "",
        "Pareto set (int8 accuracy on the search's half of the validation images against gzip "
        "size):",
        "",
        "| trial | recipe | fidelity | int8 acc | gzip bytes | within tolerance |",
        "|---|---|---|---|---|---|",
    ]
    for p in row["pareto"]:
        fidelity = p["fidelity"] if isinstance(p["fidelity"], str) else json.dumps(p["fidelity"])
        lines.append(
            f"| {p['trial']} | {p['recipe']} | {fidelity} | {p['int8_accuracy'] * 100:.2f} % | "
            f"{p['gzip_bytes']:,} | {'yes' if p['within_tolerance'] else 'no'} |"
        )
    screened = [r for r in row.get("screens", []) if not r["promoted"]]
    if screened:
        lines += [
            "",
            "Screened out (1 epoch on 25 % of the training images; int8 accuracy then): "
            + "; ".join(f"{r['recipe']} {r['screen_accuracy'] * 100:.1f} %" for r in screened)
            + ".",
        ]
    for error, count in (row.get("failures") or {}).items():
        lines += ["", f"{count} failed: {error}"]
    lines += [
        "",
        f"The float model ({row['parameters']:,} parameters) trained {row['float_epochs']} "
        f"epochs from the shards in {row['float_train_s']:.0f} s to "
        f"{row['float_val_accuracy'] * 100:.2f} % validation accuracy; its float32 file is "
        f"{row['float_gzip_bytes'] or 0:,} B gzipped. Tolerance {row['tolerance'] * 100:g} "
        "points, `--epochs 1` (the full fine-tune is one epoch of every stage; the screen one "
        "epoch on a seeded 25 %).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--val-samples", type=int, default=2000)
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=None, help="stop after N trials")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--float-epochs", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--resummarize",
        action="store_true",
        help="read --out's search_scale.json and --keep's out/report.json again, write the table",
    )
    args = parser.parse_args(argv)
    if args.resummarize:
        row = json.loads((args.out / "search_scale.json").read_text())
        row.update(summarize(json.loads((args.keep / "out" / "report.json").read_text())))
        return write(row, args)
    with tempfile.TemporaryDirectory(prefix="tfedge-bench-search-scale-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        train = write_shards(work / "train", args.samples, seed=0, prefix="train")
        val = write_shards(work / "val", args.val_samples, seed=1, prefix="val")
        print(f"== data written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        model = work / "vww.keras"
        row = {
            "model": "vww_mobilenet",
            "samples": args.samples,
            "val_samples": args.val_samples,
            "budget_minutes": args.budget_minutes,
            "tolerance": args.tolerance,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            **train_float(train, val, model, args.float_epochs),
        }
        print(f"== float model: {json.dumps(row)}", file=sys.stderr, flush=True)
        searched = run_search(model, train, val, work / "out", args)
        row.update({k: searched[k] for k in ("exit", "wall_s", "peak_rss_mb")})
        row.update(summarize(searched["report"]))
    return write(row, args)


def write(row: dict, args) -> int:
    row["met"] = bool(
        row["evaluated"] >= TARGET_CANDIDATES
        and row["wall_s"] <= args.budget_minutes * 60 * 1.1
        and row["pareto"]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_scale.json").write_text(json.dumps(row, indent=2) + "\n")
    text = table(row)
    (args.out / "search_scale.md").write_text(text + "\n")
    print(text)
    return 0 if row["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
