"""What the commands cost as the data grows: wall time and peak RSS on streamed data sets.

For each reference model (``tfedge.models.zoo.REFERENCE``, image-shaped inputs) and each size,
synthetic samples at the model's input size are written to a temporary folder as a JPEG folder
(one sub-folder per class) and as TFRecord shards (``image/encoded`` + ``image/class/label``).
Synthetic data is fine: only costs are measured. Then, each as one whole command under
``/usr/bin/time -f %M`` (peak RSS of the command's largest process):

- ``tfedge convert MODEL --calib DATA`` (300 calibration samples) beside a script that runs
  TensorFlow's own ``TFLiteConverter`` on the same model with 300 in-memory samples (the ratio is
  tfedge's overhead: both are whole commands, TensorFlow's import included);
- ``tfedge analyze MODEL --calib DATA`` (200 samples);
- ``tfedge bench MODEL_int8.tflite --data DATA`` (accuracy over the whole set through LiteRT);
- ``tfedge optimize MODEL --train DATA --val VAL --prune 0.5 --epochs 1`` (VAL: 256 samples);
- the fine-tune's images/s: tfedge's ``fit`` from the stream's prefetched ``tf.data`` view against
  a plain ``model.fit`` on a ``tf.data`` pipeline of the same shards (parse, decode, batch,
  prefetch), one epoch each, the same model and batch size.

Usage: python benchmarks/bench_streaming.py [--sizes 2000,20000] [--models vww_mobilenet,...]
       [--optimize-up-to N] [--optimize-shards-up-to M] [--append]  (optimize runs on both forms
       up to N samples, default 2000, and on the TFRecord shards up to M, default 20000)

Writes benchmarks/results/streaming.json and benchmarks/results/streaming.md.
"""

import argparse
import json
import os
import re
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


def write_sets(folder: Path, shape, classes: int, count: int, seed: int = 0) -> dict:
    """``count`` random images as a JPEG folder and as TFRecord shards; returns their paths."""
    from tfedge.core.backend import tf

    rng = np.random.default_rng(seed)
    images = folder / "images"
    shards = folder / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        (images / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    channels = shape[-1]
    writer = None
    for i in range(count):
        if i % SHARD_SIZE == 0:
            if writer is not None:
                writer.close()
            writer = tf.io.TFRecordWriter(str(shards / f"train-{i // SHARD_SIZE:05d}.tfrecord"))
        label = int(rng.integers(0, classes))
        pixels = rng.integers(0, 256, (*shape[:2], channels), dtype=np.uint8)
        jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
        (images / f"class_{label:03d}" / f"{i:06d}.jpg").write_bytes(jpeg)
        example = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[label])
                    ),
                }
            )
        )
        writer.write(example.SerializeToString())
    writer.close()
    return {"folder": str(images), "tfrecord": f"{shards}/*.tfrecord"}


TF_CONVERT = """
import sys, numpy as np
from tfedge.core.backend import tf, keras
model = keras.models.load_model(sys.argv[1])
shape = model.input_shape[1:]
calib = np.random.default_rng(0).uniform(0, 255, (300, *shape)).astype(np.float32)
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([x[None]] for x in calib)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = converter.inference_output_type = tf.int8
open(sys.argv[2], "wb").write(converter.convert())
"""

FIT_RATE = """
import json, sys, time
import numpy as np
from tfedge.core.backend import tf, keras
from tfedge.models.training import fit
from tfedge.core.streams import stream_data

model_path, shards, batch = sys.argv[1], sys.argv[2], 32
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

files = sorted(tf.io.gfile.glob(shards))
plain_ds = (tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .shuffle(4096, seed=0).batch(batch).prefetch(tf.data.AUTOTUNE))
stream = stream_data(shards, input_shape=shape, require_labels=True, in_memory_bytes=0)
count = len(stream)
model = fresh()
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
started = time.perf_counter()  # one epoch each, compiling and tracing included in both
model.fit(plain_ds, epochs=1, verbose=0)
plain = count / (time.perf_counter() - started)
model = fresh()
started = time.perf_counter()
fit(model, stream, None, epochs=1, batch_size=batch, restore_best=False)
ours = count / (time.perf_counter() - started)
print(json.dumps({"plain_images_s": round(plain, 1), "tfedge_images_s": round(ours, 1)}))
"""


def run_model(
    name: str, sizes, work: Path, optimize_up_to: int, optimize_shards_up_to: int = 0
) -> Iterator[dict]:
    from tfedge.models.zoo import REFERENCE

    model = REFERENCE[name]()
    shape = tuple(model.input_shape[1:])
    classes = int(model.output_shape[-1])
    model_path = work / f"{name}.keras"
    model.save(model_path)
    val = write_sets(work / "val", shape, classes, VAL_SIZE, seed=99)["folder"]
    for size in sizes:
        sets = write_sets(work / f"n{size}", shape, classes, size)
        for form, data in sets.items():
            row = {"model": name, "input": list(shape), "samples": size, "form": form}
            out = work / f"{name}-{size}-{form}.tflite"
            # The reference right before tfedge's convert: the same load on the shared machine.
            reference = timed([sys.executable, "-c", TF_CONVERT, model_path, work / "tf.tflite"])
            row["convert"] = timed([*TFEDGE, "convert", model_path, "--calib", data, "-o", out])
            row["tf_converter"] = reference
            row["convert_ratio"] = round(row["convert"]["wall_s"] / reference["wall_s"], 2)
            row["analyze"] = timed([*TFEDGE, "analyze", model_path, "--calib", data])
            row["bench"] = timed([*TFEDGE, "bench", out, "--data", data, "--runs", "20"])
            if size <= optimize_up_to or (form == "tfrecord" and size <= optimize_shards_up_to):
                row["optimize"] = timed(
                    [
                        *TFEDGE,
                        "optimize",
                        model_path,
                        "--train",
                        data,
                        "--val",
                        val,
                        "--prune",
                        "0.5",
                        "--epochs",
                        "1",
                        "-o",
                        work / f"opt-{size}-{form}",
                    ]
                )
            if form == "tfrecord" and size == min(sizes):
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


def _cell(entry) -> str:
    return "" if not entry else f"{entry['wall_s']:.0f} s / {entry['peak_rss_mb']:.0f} MB"


def table(rows, sizes, not_run) -> str:
    lines = [
        "### Streaming data: wall time / peak RSS of whole commands as the data grows "
        "(synthetic JPEG folders and TFRecord shards at the model's input; one run)",
        "",
        "| model | input | samples | form | convert --calib | TF converter | ratio | analyze | "
        "bench --data | optimize --prune 0.5, 1 epoch | fine-tune img/s (tfedge / plain fit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rate = (
            f"{row['tfedge_images_s']:.0f} / {row['plain_images_s']:.0f} "
            f"({row['tfedge_images_s'] / row['plain_images_s']:.2f}x)"
            if "plain_images_s" in row
            else ""
        )
        lines.append(
            f"| {row['model']} | {'x'.join(map(str, row['input']))} | {row['samples']:,} | "
            f"{row['form']} | {_cell(row['convert'])} | {_cell(row['tf_converter'])} | "
            f"{row['convert_ratio']:.2f}x | {_cell(row['analyze'])} | {_cell(row['bench'])} | "
            f"{_cell(row.get('optimize'))} | {rate} |"
        )
    lines += [
        "",
        "Peak RSS is `/usr/bin/time -f %M` of the whole command (its largest process; the bench "
        "runner is a child process). The TF converter column is a script that loads the model "
        "and runs `TFLiteConverter` with 300 in-memory samples; the ratio is tfedge's convert "
        f"wall time over it (TensorFlow's `from_keras_model` goes through a SavedModel export; "
        "tfedge converts a concrete function). optimize validates on "
        f"{VAL_SIZE} samples. Sets of at most 64 MB as float32 (kws_ds_cnn up to 20,000 "
        "samples, ic_resnet8 at 2,000) are read whole by design, so their RSS grows a little "
        f"with the size. Wall times come from a shared 2-core machine with other test runs "
        "going on, so compare them only within a row; the peak RSS does not depend on that "
        f"load. {not_run}",
    ]
    return "\n".join(lines) + "\n"


def save(rows, names, sizes, previous) -> None:
    """Write streaming.json and streaming.md (after every row: a long run keeps what it measured)."""
    if previous:
        rows = previous["rows"] + rows
        names = list(dict.fromkeys(previous["models"] + names))
        sizes = sorted(set(previous["sizes"]) | set(sizes))
    skipped = [n for n in IMAGE_MODELS if n not in names]
    not_run = (
        "Blank cells and models or sizes missing from the table were not run: "
        f"{', '.join(skipped) or 'no model'} not run, no size beyond "
        f"{max(sizes):,} (100,000 does not fit this run's time), and ad_autoencoder is left out "
        "(its 640 inputs are not images)."
    )
    payload = {"sizes": sizes, "models": names, "rows": rows, "not_run": not_run}
    (RESULTS / "streaming.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "streaming.md").write_text(table(rows, sizes, not_run))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--models", default="vww_mobilenet")
    parser.add_argument("--optimize-up-to", type=int, default=2000)
    parser.add_argument(
        "--optimize-shards-up-to", type=int, default=20000, help="optimize on the shards up to N"
    )
    parser.add_argument("--append", action="store_true", help="add to the previous rows")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [n for n in args.models.split(",") if n in IMAGE_MODELS]
    RESULTS.mkdir(exist_ok=True)
    previous_file = RESULTS / "streaming.json"
    previous = (
        json.loads(previous_file.read_text()) if args.append and previous_file.is_file() else None
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfedge-stream-bench-") as tmp:
        for name in names:
            folder = Path(tmp) / name
            folder.mkdir()
            for row in run_model(
                name, sizes, folder, args.optimize_up_to, args.optimize_shards_up_to
            ):
                rows.append(row)
                save(rows, names, sizes, previous)
    print((RESULTS / "streaming.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
