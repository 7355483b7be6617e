"""Fine-tuning under ``--strategy multiworker``: the streamed set is sharded per worker by file.

Two real worker processes on loopback (``TF_CONFIG`` with two 127.0.0.1 ports) fit a tiny model on
4 TFRecord shards whose records carry their shard's number as the label, so the labels a worker
trains on say which files it read.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfedge.core.streams import stream_data

SHAPE = (8, 8, 1)
SHARDS = 4
PER_SHARD = 16
BATCH = 8

WORKER = """
import json
import sys

from tfedge.models.training import fit, resolve_strategy, worker_count

# MultiWorkerMirroredStrategy first: collective ops are set up before TensorFlow runs anything.
strategy = resolve_strategy("multiworker")

from tfedge.core.backend import keras
from tfedge.core.streams import stream_data

shards, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
train = stream_data(shards, input_shape=(8, 8, 1), in_memory_bytes=0, require_labels=True)
val = stream_data(shards, input_shape=(8, 8, 1), in_memory_bytes=0, require_labels=True)
with strategy.scope():
    model = keras.Sequential(
        [
            keras.layers.Input((8, 8, 1)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
steps = []


class Steps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        steps.append(batch)


best = fit(model, train, val, epochs=1, batch_size=batch, strategy=strategy, callbacks=[Steps()])
# This worker's share of the fit pipeline, distributed the way Keras distributes it.
seen = set()
dataset = train.as_tf_dataset(batch, shuffle=True, workers=worker_count(strategy))
for _, y in strategy.experimental_distribute_dataset(dataset):
    for part in strategy.experimental_local_results(y):
        seen.update(int(v) for v in part.numpy())
with open(out, "w") as handle:
    json.dump(
        {
            "workers": worker_count(strategy),
            "steps": len(steps),
            "val_accuracy": best.best,
            "labels": sorted(seen),
            "weights": [w.tolist() for w in model.get_weights()],
        },
        handle,
    )
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def numbered_shards(tmp_path_factory):
    """4 TFRecord shards of 16 JPEG digits-sized images; every record's label is its shard."""
    from tfedge.core.backend import tf

    folder = tmp_path_factory.mktemp("numbered")
    rng = np.random.default_rng(0)
    for shard in range(SHARDS):
        with tf.io.TFRecordWriter(str(folder / f"part-{shard}.tfrecord")) as writer:
            for _ in range(PER_SHARD):
                pixels = rng.integers(0, 255, SHAPE).astype(np.uint8)
                feature = {
                    "image/encoded": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(pixels).numpy()])
                    ),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[shard])
                    ),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    return folder


def test_the_file_pipelines_hold_what_the_checked_batches_hold(numbered_shards, tmp_path):
    # The sharded pipelines decode in the graph: the same pixels and labels as the checked path.
    from tfedge.core.backend import tf

    root = tmp_path / "folder"
    for shard in range(SHARDS):
        (root / f"digit_{shard}").mkdir(parents=True)
        for i, record in enumerate(
            tf.data.TFRecordDataset(str(numbered_shards / f"part-{shard}.tfrecord"))
        ):
            example = tf.train.Example.FromString(record.numpy())
            image = example.features.feature["image/encoded"].bytes_list.value[0]
            (root / f"digit_{shard}" / f"{i:02d}.jpg").write_bytes(image)
    for source in (f"{numbered_shards}/*.tfrecord", str(root)):
        stream = stream_data(source, input_shape=SHAPE, in_memory_bytes=0, require_labels=True)
        checked = [np.concatenate(part) for part in zip(*stream.batches(BATCH), strict=True)]
        native = stream.as_tf_dataset(BATCH, shuffle=True, workers=2, prefetch=False)
        policy = native.options().experimental_distribute.auto_shard_policy
        assert policy == tf.data.experimental.AutoShardPolicy.FILE
        x, y = (np.concatenate(part) for part in zip(*native.as_numpy_iterator(), strict=True))
        assert sorted(y.tolist()) == sorted(checked[1].tolist())
        order = np.lexsort((x.reshape(len(x), -1).sum(axis=1), y))
        want = np.lexsort((checked[0].reshape(len(x), -1).sum(axis=1), checked[1]))
        np.testing.assert_array_equal(x[order], checked[0][want])
        np.testing.assert_array_equal(y[order], checked[1][want])


def test_arrays_shard_by_batch():
    from tfedge.core.backend import tf

    stream = stream_data((np.zeros((40, 3), np.float32), np.arange(40) % 2), in_memory_bytes=0)
    policy = stream.as_tf_dataset(8, workers=2).options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


@pytest.mark.slow
def test_two_workers_on_loopback_each_train_on_their_own_shards(numbered_shards, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env.pop("TFEDGE_LOGICAL_CPUS", None)
        out = tmp_path / f"worker{index}.json"
        argv = [sys.executable, str(script), f"{numbered_shards}/*.tfrecord", str(out), str(BATCH)]
        processes.append(
            (out, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        )
    results = []
    try:
        for out, process in processes:
            log, _ = process.communicate(timeout=300)
            assert process.returncode == 0, log.decode(errors="replace")[-3000:]
            results.append(json.loads(out.read_text()))
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
    first, second = results
    assert first["workers"] == second["workers"] == 2
    # By file: each worker reads 2 of the 4 shards, no shard twice, none left out.
    assert len(first["labels"]) == len(second["labels"]) == SHARDS // 2
    assert set(first["labels"]).isdisjoint(second["labels"])
    assert set(first["labels"]) | set(second["labels"]) == set(range(SHARDS))
    # One epoch is the global batch count (each worker a half-size batch over its half).
    assert first["steps"] == second["steps"] == SHARDS * PER_SHARD // BATCH
    assert first["val_accuracy"] == pytest.approx(second["val_accuracy"])
    assert 0 <= first["val_accuracy"] <= 1
    for a, b in zip(first["weights"], second["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_multiworker_after_tensorflow_ran_is_one_clear_error():
    script = (
        "from tfedge.core.backend import tf\n"
        "from tfedge.core.errors import OptimizationError\n"
        "from tfedge.models.training import resolve_strategy\n"
        "tf.ones(1).numpy()\n"
        "try:\n"
        "    resolve_strategy('multiworker')\n"
        "except OptimizationError as exc:\n"
        "    print('refused:', exc, exc.hint)\n"
    )
    cluster = {"worker": [f"127.0.0.1:{_free_ports(1)[0]}"]}
    env = dict(
        os.environ,
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "resolve_strategy('multiworker')" in done.stdout
