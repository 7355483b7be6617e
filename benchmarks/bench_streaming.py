"""What the commands cost as the data grows: wall time and peak RSS on streamed data sets.

For each reference model (``tfedge.models.zoo.REFERENCE``) and each size, synthetic samples at the
model's input size are written to a temporary folder: for an image model as a JPEG folder (one
sub-folder per class) and as TFRecord shards (``image/encoded`` + ``image/class/label``); for
``ad_autoencoder`` (640 float inputs, not images) as an uncompressed ``.npz`` (memory-mapped by the
stream once it is over 64 MB) and as TFRecord shards with a float feature (``x``, no labels).
Synthetic data is fine: only costs are measured. Then, each as one whole command under
``/usr/bin/time -f %M`` (peak RSS of the command's largest process):

- ``tfedge convert MODEL --calib DATA`` (300 calibration samples) beside a script that runs
  TensorFlow's own ``TFLiteConverter`` on the same model with 300 in-memory samples (the ratio is
  tfedge's overhead: both are whole commands, TensorFlow's import included);
- ``tfedge analyze MODEL --calib DATA`` (200 samples);
- ``tfedge bench MODEL_int8.tflite --data DATA`` (the whole set through LiteRT);
- ``tfedge optimize MODEL --train DATA --val VAL --prune 0.5 --epochs 1`` (VAL: 256 samples;
  classifiers only: it fine-tunes on integer labels, the autoencoder's target is its input);
- the fine-tune's images/s: tfedge's ``fit`` from the stream's prefetched ``tf.data`` view against
  a plain ``model.fit`` on a ``tf.data`` pipeline of the same shards (parse, decode, shuffle,
  batch, prefetch), the same model and batch size: 3 epochs each, twice each in the order
  plain, tfedge, tfedge, plain; the rate is the median of the epochs after the first (the
  steady rate), and the first epoch's rate (tracing and start-up included) is kept beside it.

Rows are merged into the previous ``streaming.json`` by (model, samples, form): what this run
measured replaces the old cells, the other rows and cells stay (``--fresh`` starts over). A
command left out (``--commands``, the optimize limits) reads "not run (time)" in the table.

Usage: python benchmarks/bench_streaming.py [--sizes 2000,20000] [--models vww_mobilenet,...]
       [--forms folder,tfrecord,npz] [--commands convert,analyze,bench,optimize,fit]
       [--optimize-up-to N] [--optimize-shards-up-to M] [--fit-rate-at S] [--fresh] [--large]
       [--note TEXT] [--table-only]
       (optimize runs on both forms up to N samples, default 2000, and on the TFRecord shards up
       to M, default 20000; the fine-tune rate is measured on the shards of S samples, default
       2000). ``make bench`` runs the defaults (vww_mobilenet at 2,000 and 20,000: about 20
       minutes, the sum of the table's cells). ``--large`` is the large run of the README
       table, one command of about 50 minutes on 2 cores (the runs of ``LARGE_RUN`` in turn,
       each merged into the table).

Writes benchmarks/results/streaming.json and benchmarks/results/streaming.md.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TFEDGE = [sys.executable, "-m", "tfedge"]
IMAGE_MODELS = ("vww_mobilenet", "kws_ds_cnn", "ic_resnet8", "mobilenet_v2")
VECTOR_MODELS = ("ad_autoencoder",)  # float inputs, not images: .npz and float TFRecord features
MODELS = IMAGE_MODELS + VECTOR_MODELS
COMMANDS = ("convert", "analyze", "bench", "optimize", "fit")
NOT_RUN = "not run (time)"
#: ``--large``: vww_mobilenet at 100,000 beside a fresh 2,000, then one epoch of optimize on its
#: 100,000 images in both forms (the longest part, about 10 minutes each), the autoencoder up to
#: 100,000 (.npz and float shards) and MobileNetV2 at 2,000 (its optimize epoch is left out).
LARGE_RUN = (
    "--sizes 2000,100000 --models vww_mobilenet --commands convert,analyze,bench,fit",
    "--sizes 100000 --models vww_mobilenet --commands optimize --optimize-up-to 100000",
    "--sizes 2000,20000,100000 --models ad_autoencoder",
    "--sizes 2000 --models mobilenet_v2 --commands convert,analyze,bench",
)
NO_LABELS = "n/a (no class labels)"
SHARD_SIZE = 1000
VAL_SIZE = 256
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def timed(command, cwd=None) -> dict:
    """Run one whole command under /usr/bin/time: wall seconds and peak RSS (MB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        started = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-o", rss.name, "-f", "%M", *map(str, command)],
            cwd=cwd,
            env=ENV,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        text = Path(rss.name).read_text()
    numbers = re.findall(r"^(\d+)$", text, re.M)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(map(str, command[:3]))} failed: {' | '.join(tail)}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(int(numbers[-1]) / 1024, 1)}


def write_sets(folder: Path, shape, classes: int, count: int, seed: int = 0, forms=None) -> dict:
    """``count`` random samples in each of ``forms`` (all that fit the input by default).

    Images (3-d inputs) as a JPEG folder and TFRecord shards; float vectors as an ``.npz`` and
    TFRecord shards with a float feature. Returns ``{form: path}``.
    """
    from tfedge.core.backend import tf
    from tfedge.core.streams import write_npz

    rng = np.random.default_rng(seed)
    image = len(shape) == 3
    forms = [f for f in (forms or ("folder", "tfrecord", "npz")) if f in _forms_of(shape)]
    paths = {}
    images = folder / "images"
    shards = folder / "shards"
    if "folder" in forms:
        for c in range(classes):
            (images / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
        paths["folder"] = str(images)
    if "tfrecord" in forms:
        shards.mkdir(parents=True, exist_ok=True)
        paths["tfrecord"] = f"{shards}/*.tfrecord" + ("" if image else "#image=x")
    if not image:
        return _write_vectors(folder, shape, count, rng, forms, paths, write_npz)
    writer = None
    for i in range(count):
        label = int(rng.integers(0, classes))
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
        if "folder" in forms:
            (images / f"class_{label:03d}" / f"{i:06d}.jpg").write_bytes(jpeg)
        if "tfrecord" in forms:
            writer = _shard_writer(writer, shards, i)
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(_example(feature))
    if writer is not None:
        writer.close()
    return paths


def _forms_of(shape) -> tuple:
    return ("folder", "tfrecord") if len(shape) == 3 else ("npz", "tfrecord")


def _shard_writer(writer, shards: Path, i: int):
    """The writer of record ``i``: a new shard every ``SHARD_SIZE`` records."""
    from tfedge.core.backend import tf

    if i % SHARD_SIZE:
        return writer
    if writer is not None:
        writer.close()
    return tf.io.TFRecordWriter(str(shards / f"train-{i // SHARD_SIZE:05d}.tfrecord"))


def _example(feature: dict) -> bytes:
    from tfedge.core.backend import tf

    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_vectors(folder: Path, shape, count, rng, forms, paths, write_npz) -> dict:
    """Standard-normal float vectors, ``SHARD_SIZE`` at a time, as ``.npz`` and/or float shards."""
    from tfedge.core.backend import tf

    def chunks():
        writer = None
        for start in range(0, count, SHARD_SIZE):
            x = rng.standard_normal((min(SHARD_SIZE, count - start), *shape), np.float32)
            if "tfrecord" in forms:
                writer = _shard_writer(writer, folder / "shards", start)
                for row in x:
                    values = tf.train.FloatList(value=row.ravel())
                    writer.write(_example({"x": tf.train.Feature(float_list=values)}))
            yield x, None
        if writer is not None:
            writer.close()

    if "npz" in forms:
        paths["npz"] = str(write_npz(folder / "data.npz", chunks(), count, shape))
    else:
        for _ in chunks():
            pass
    return paths


TF_CONVERT = """
import sys, numpy as np
from tfedge.core.backend import tf, keras
model = keras.models.load_model(sys.argv[1])
shape = model.input_shape[1:]
rng = np.random.default_rng(0)
calib = (rng.uniform(0, 255, (300, *shape)) if len(shape) == 3 else rng.standard_normal((300, *shape)))
calib = calib.astype(np.float32)
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([x[None]] for x in calib)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = converter.inference_output_type = tf.int8
open(sys.argv[2], "wb").write(converter.convert())
"""

FIT_RATE = """
import json, statistics, sys, time
import numpy as np
from tfedge.core.backend import tf, keras
from tfedge.models.training import fit
from tfedge.core.streams import stream_data

model_path, shards, batch, epochs = sys.argv[1], sys.argv[2], 32, 3
shape = keras.models.load_model(model_path).input_shape[1:]

def fresh():
    keras.utils.set_random_seed(0)
    return keras.models.load_model(model_path)

def parse(record):
    f = tf.io.parse_single_example(record, {"image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
    image = tf.io.decode_image(f["image/encoded"], channels=shape[-1], expand_animations=False)
    image.set_shape(shape)
    return tf.cast(image, tf.float32), f["image/class/label"]

class Clock(keras.callbacks.Callback):
    # the time at the end of each epoch: epoch 1 holds the tracing, later ones the steady rate
    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]
    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

files = sorted(tf.io.gfile.glob(shards))
plain_ds = (tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .shuffle(4096, seed=0).batch(batch).prefetch(tf.data.AUTOTUNE))
stream = stream_data(shards, input_shape=shape, require_labels=True, in_memory_bytes=0)
count = len(stream)

def plain_run():
    model, clock = fresh(), Clock()
    started = time.perf_counter()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(plain_ds, epochs=epochs, verbose=0, callbacks=[clock])
    return started, clock.ends

def tfedge_run():
    model, clock = fresh(), Clock()
    started = time.perf_counter()
    fit(model, stream, None, epochs=epochs, batch_size=batch, restore_best=False, callbacks=[clock])
    return started, clock.ends

rates = {"plain": [], "tfedge": []}
firsts = {"plain": [], "tfedge": []}
for name in ("plain", "tfedge", "tfedge", "plain"):  # ABBA: drift on a shared machine cancels
    started, ends = (plain_run if name == "plain" else tfedge_run)()
    firsts[name].append(count / (ends[1] - started))
    rates[name] += [count / (b - a) for a, b in zip(ends[1:], ends[2:])]
print(json.dumps({
    "plain_images_s": round(statistics.median(rates["plain"]), 1),
    "tfedge_images_s": round(statistics.median(rates["tfedge"]), 1),
    "plain_first_epoch_images_s": round(statistics.median(firsts["plain"]), 1),
    "tfedge_first_epoch_images_s": round(statistics.median(firsts["tfedge"]), 1),
}))
"""


def run_model(name: str, sizes, work: Path, args) -> Iterator[dict]:
    from tfedge.models.zoo import REFERENCE

    model = REFERENCE[name]()
    shape = tuple(model.input_shape[1:])
    classes = int(model.output_shape[-1])
    classifier = name not in VECTOR_MODELS
    model_path = work / f"{name}.keras"
    model.save(model_path)
    commands = set(args.commands)
    optimize = classifier and "optimize" in commands
    val = None
    if optimize:
        val = write_sets(work / "val", shape, classes, VAL_SIZE, seed=99, forms=["folder"])
    for size in sizes:
        sets = write_sets(work / f"n{size}", shape, classes, size, forms=args.forms)
        for form, data in sets.items():
            row = {"model": name, "input": list(shape), "samples": size, "form": form}
            out = work / f"{name}-{size}-{form}.tflite"
            if "convert" in commands or "bench" in commands:
                # The reference right before tfedge's convert: the same load on the shared machine.
                reference = timed(
                    [sys.executable, "-c", TF_CONVERT, model_path, work / "tf.tflite"]
                )
                row["convert"] = timed([*TFEDGE, "convert", model_path, "--calib", data, "-o", out])
                row["tf_converter"] = reference
                row["convert_ratio"] = round(row["convert"]["wall_s"] / reference["wall_s"], 2)
            if "analyze" in commands:
                row["analyze"] = timed([*TFEDGE, "analyze", model_path, "--calib", data])
            if "bench" in commands:
                row["bench"] = timed([*TFEDGE, "bench", out, "--data", data, "--runs", "20"])
            if not classifier:
                row["optimize"] = NO_LABELS
            elif optimize and (
                size <= args.optimize_up_to
                or (form == "tfrecord" and size <= args.optimize_shards_up_to)
            ):
                row["optimize"] = timed(
                    [
                        *TFEDGE,
                        "optimize",
                        model_path,
                        "--train",
                        data,
                        "--val",
                        val["folder"],
                        "--prune",
                        "0.5",
                        "--epochs",
                        "1",
                        "-o",
                        work / f"opt-{size}-{form}",
                    ]
                )
            if classifier and "fit" in commands and form == "tfrecord" and size == args.fit_rate_at:
                done = subprocess.run(
                    [sys.executable, "-c", FIT_RATE, model_path, data],
                    env=ENV,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(row), flush=True)
            yield row
        shutil.rmtree(work / f"n{size}")  # a few GB at 100,000 samples: gone before the next size


def _cell(entry) -> str:
    if isinstance(entry, str):
        return entry
    return NOT_RUN if not entry else f"{entry['wall_s']:.0f} s / {entry['peak_rss_mb']:.0f} MB"


def growth(rows, low: int = 2000, high: int = 100000) -> str:
    """One sentence: the peak-RSS growth from ``low`` to ``high`` samples per command, per row pair.

    Computed from the rows of the same model and form measured at both sizes; empty if none.
    """
    by_key = {(r["model"], r["form"], r["samples"]): r for r in rows}
    parts = []
    for (model, form, samples), row in by_key.items():
        big = by_key.get((model, form, high))
        if samples != low or big is None:
            continue
        changes = []
        for command in ("convert", "analyze", "bench", "optimize"):
            a, b = row.get(command), big.get(command)
            if isinstance(a, dict) and isinstance(b, dict):
                low_mb, high_mb = a["peak_rss_mb"], b["peak_rss_mb"]
                change = 100 * (high_mb / low_mb - 1)
                changes.append(f"{command} {change:+.0f} % ({low_mb:.0f} -> {high_mb:.0f} MB)")
        if changes:
            parts.append(f"{model} {form}: {', '.join(changes)}")
    if not parts:
        return ""
    return (
        f"Peak RSS growth from {low:,} to {high:,} samples (the rows above): "
        + "; ".join(parts)
        + "."
    )


def _rate(row) -> str:
    """The fine-tune rate cell: the steady rates and their ratio, then the first epoch's."""
    if "plain_images_s" not in row:
        return ""
    cell = (
        f"{row['tfedge_images_s']:.0f} / {row['plain_images_s']:.0f} "
        f"({row['tfedge_images_s'] / row['plain_images_s']:.2f}x)"
    )
    if "plain_first_epoch_images_s" in row:  # rows measured before the steady rate: one epoch
        first, plain = row["tfedge_first_epoch_images_s"], row["plain_first_epoch_images_s"]
        cell += f" (first epoch {first:.0f} / {plain:.0f}, {first / plain:.2f}x)"
    else:
        cell += " (one epoch, before the steady rate)"
    return cell


def table(rows, not_run) -> str:
    lines = [
        "### Streaming data: wall time / peak RSS of whole commands as the data grows "
        "(synthetic JPEG folders, TFRecord shards and .npz at the model's input; one run)",
        "",
        "| model | input | samples | form | convert --calib | TF converter | ratio | analyze | "
        "bench --data | optimize --prune 0.5, 1 epoch | "
        "fine-tune img/s, tfedge / plain fit: steady (first epoch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(MODELS)}
    forms = ("folder", "npz", "tfrecord")
    rows = sorted(rows, key=lambda r: (order[r["model"]], r["samples"], forms.index(r["form"])))
    for row in rows:
        rate = _rate(row)
        ratio = f"{row['convert_ratio']:.2f}x" if "convert_ratio" in row else ""
        lines.append(
            f"| {row['model']} | {'x'.join(map(str, row['input']))} | {row['samples']:,} | "
            f"{row['form']} | {_cell(row.get('convert'))} | {_cell(row.get('tf_converter'))} | "
            f"{ratio} | {_cell(row.get('analyze'))} | {_cell(row.get('bench'))} | "
            f"{_cell(row.get('optimize'))} | {rate} |"
        )
    lines += [
        "",
        "Peak RSS is `/usr/bin/time -f %M` of the whole command (its largest process; the bench "
        "runner is a child process). The TF converter column is a script that loads the model "
        "and runs `TFLiteConverter` with 300 in-memory samples; the ratio is tfedge's convert "
        "wall time over it (TensorFlow's `from_keras_model` goes through a SavedModel export; "
        "tfedge converts a concrete function). optimize validates on "
        f"{VAL_SIZE} samples. Sets of at most 64 MB as float32 (kws_ds_cnn up to 20,000 "
        "samples, ic_resnet8 at 2,000, ad_autoencoder up to 20,000) are read whole by design, so "
        "their RSS grows a little with the size; larger ones stream (the autoencoder's .npz "
        "memory-mapped). ad_autoencoder's sets have no labels (bench --data measures the pass "
        "over the set, no accuracy). Wall times come from a shared 2-core machine with other "
        "test runs going on, so compare them only within a row; the peak RSS does not depend on "
        f"that load. {not_run}",
    ]
    sentence = growth(rows)
    if sentence:
        lines += ["", sentence]
    return "\n".join(lines) + "\n"


def merge(previous: list, rows: list) -> list:
    """``previous`` rows updated by ``rows`` per (model, samples, form), cell by cell."""
    merged = {}
    for row in [*previous, *rows]:
        key = (row["model"], row["samples"], row["form"])
        merged[key] = {**merged.get(key, {}), **row}
    return list(merged.values())


def save(rows, previous, note: str | None = None) -> None:
    """Write streaming.json and streaming.md (after every row: a long run keeps what it measured)."""
    rows = merge(previous.get("rows", []), rows)
    names = [n for n in MODELS if any(r["model"] == n for r in rows)]
    sizes = sorted({r["samples"] for r in rows})
    skipped = [n for n in MODELS if n not in names]
    not_run = (
        note
        or previous.get("not_run")
        or (
            'Cells reading "not run (time)" and models or sizes missing from the table were not '
            f"run in the time of the run: {', '.join(skipped) or 'no model'} left out."
        )
    )
    payload = {"sizes": sizes, "models": names, "rows": rows, "not_run": not_run}
    (RESULTS / "streaming.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "streaming.md").write_text(table(rows, not_run))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--models", default="vww_mobilenet")
    parser.add_argument("--forms", default="folder,tfrecord,npz", help="those that fit each model")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--optimize-up-to", type=int, default=2000)
    parser.add_argument(
        "--optimize-shards-up-to", type=int, default=20000, help="optimize on the shards up to N"
    )
    parser.add_argument("--fit-rate-at", type=int, default=2000, help="fine-tune rate at N")
    parser.add_argument("--note", help="the table's note on what was not run (kept if omitted)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table, run nothing")
    parser.add_argument("--fresh", action="store_true", help="drop the previous rows")
    parser.add_argument("--large", action="store_true", help="the runs of LARGE_RUN in turn")
    args = parser.parse_args(argv)
    if args.large:
        note = ["--note", args.note] if args.note else []
        return max(main([*run.split(), *note]) for run in LARGE_RUN)
    sizes = [int(s) for s in args.sizes.split(",")]
    args.forms = args.forms.split(",")
    args.commands = args.commands.split(",")
    unknown = sorted({*args.models.split(",")} - set(MODELS)) + sorted(
        set(args.commands) - set(COMMANDS)
    )
    if unknown:
        parser.error(f"unknown model or command {unknown}; models: {MODELS}, commands: {COMMANDS}")
    names = args.models.split(",")
    RESULTS.mkdir(exist_ok=True)
    previous_file = RESULTS / "streaming.json"
    previous = (
        json.loads(previous_file.read_text()) if previous_file.is_file() and not args.fresh else {}
    )
    if args.table_only:
        save([], previous, args.note)
        print((RESULTS / "streaming.md").read_text())
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfedge-stream-bench-") as tmp:
        for name in names:
            folder = Path(tmp) / name
            folder.mkdir()
            for row in run_model(name, sizes, folder, args):
                rows.append(row)
                save(rows, previous, args.note)
    print((RESULTS / "streaming.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
