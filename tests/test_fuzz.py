"""Fuzzing: odd data, broken files, mutated models and random options never crash a command.

The property, for every case: the command exits 0, or exits 1 with exactly one ``Error:`` line;
never a traceback, an "unexpected failure", a signal or a hang, and no input file changes.

Hypothesis runs derandomized (a fixed seed) with a bounded number of examples in ``make test``;
``make fuzz`` sets ``TFEDGE_FUZZ_EXAMPLES`` (and ``TFEDGE_FUZZ_MUTANTS``) much higher. Data and
option cases run the command line in-process (``tfedge.cli.main``); the mutated ``.tflite`` and
``.npz`` files go to a real ``tfedge`` process each, so a native crash inside LiteRT shows up as
the signal it is.
"""

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfedge.cli import main

EXAMPLES = int(os.environ.get("TFEDGE_FUZZ_EXAMPLES", "25"))
MUTANTS = int(os.environ.get("TFEDGE_FUZZ_MUTANTS", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
TFEDGE = [sys.executable, "-m", "tfedge"]

pytestmark = pytest.mark.fuzz


def _digest(paths) -> dict:
    found = {}
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def check_outcome(status: int, err: str) -> None:
    """Exit 0, or exit 1 with one ``Error:`` line; no traceback or unexpected failure."""
    assert status in (0, 1), f"exit status {status}:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "unexpected failure" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    if status == 1:
        assert len(lines) >= 1, f"exit 1 without an Error line:\n{err[-2000:]}"
        # bench prints one error row per failed model and device; the rest print exactly one
        assert all(len(line) < 2000 for line in lines)


def run_inprocess(argv, capsys, inputs) -> tuple[int, str]:
    before = _digest(inputs)
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    check_outcome(status, err)
    assert _digest(inputs) == before, f"{argv} changed an input"
    return status, err


def run_process(argv, inputs, timeout: int = 120) -> tuple[int, str]:
    before = _digest(inputs)
    try:
        proc = subprocess.run(
            [*TFEDGE, *map(str, argv)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv} hung for more than {timeout} s")
    assert proc.returncode >= 0, (
        f"{argv} ended by signal {-proc.returncode}:\n{proc.stderr[-2000:]}"
    )
    check_outcome(proc.returncode, proc.stderr)
    assert _digest(inputs) == before, f"{argv} changed an input"
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """Two real int8 models: a dense one on 8 features, and a conv one on 8x8x3 images."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras

    folder = tmp_path_factory.mktemp("fuzz-models")
    rng = np.random.default_rng(0)
    dense = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(6, activation="relu", name="fc1")]
        + [keras.layers.Dense(3, name="logits")],
        name="fuzz_dense",
    )
    conv = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, name="logits"),
        ],
        name="fuzz_conv",
    )
    paths = {}
    for name, model, shape in (("dense", dense, (8,)), ("conv", conv, (8, 8, 3))):
        calib = rng.random((32, *shape), dtype=np.float32)
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(convert(model, calib=calib))
        paths[f"{name}_keras"] = folder / f"{name}.keras"
        model.save(paths[f"{name}_keras"])
    return paths


DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int64", "bool", "complex64", "<U2"]


@st.composite
def npz_arrays(draw):
    """x (and maybe y) of odd dtypes and shapes, NaN and infinities, extra or missing arrays."""
    arrays = {}
    count = draw(st.integers(0, 6))
    if draw(st.integers(0, 9)) > 0:  # now and then no x at all
        shape = draw(
            st.sampled_from([(count, 8), (count,), (count, 8, 1), (count, 4), (count, 8, 8, 3)])
        )
        dtype = draw(st.sampled_from(DTYPES))
        values = draw(st.sampled_from(["random", "nan", "inf", "huge", "zeros"]))
        x = np.random.default_rng(draw(st.integers(0, 99))).random(shape) * 4 - 2
        if values == "nan" and x.size:
            x.flat[draw(st.integers(0, x.size - 1))] = np.nan
        elif values == "inf" and x.size:
            x.flat[0] = np.inf
        elif values == "huge":
            x = x * 1e30
        elif values == "zeros":
            x = np.zeros(shape)
        with np.errstate(all="ignore"):
            arrays[draw(st.sampled_from(["x", "x", "x", "X", "inputs"]))] = x.astype(dtype)
    if draw(st.booleans()):
        y_count = draw(st.sampled_from([count, count + 1, max(count - 1, 0)]))
        y = draw(
            st.sampled_from(
                [
                    np.arange(y_count) % 3,
                    np.arange(y_count) + 5,
                    -np.arange(y_count),
                    np.full(y_count, 0.5),
                    np.eye(3)[np.arange(y_count) % 3],
                    np.array(["a"] * y_count),
                ]
            )
        )
        arrays["y"] = y
    return arrays


@given(arrays=npz_arrays(), command=st.sampled_from(["bench", "compare", "bench-conv"]))
@FUZZ
def test_odd_npz_data(small_models, tmp_path_factory, capsys, arrays, command):
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "data.npz"
    np.savez(path, **arrays)
    model = small_models["conv" if command == "bench-conv" else "dense"]
    if command == "compare":
        argv = ["compare", model, model, "--data", path]
    else:
        argv = ["bench", model, "--data", path, "--runs", 1, "--warmup", 0]
    status, _ = run_inprocess(argv, capsys, [path, model])
    if status == 0 and command != "compare":
        assert arrays.get("x") is not None and len(arrays["x"]) > 0


@st.composite
def image_folders(draw):
    """Class folders with good images, broken files, odd sizes, empty classes, stray files."""
    kinds = draw(
        st.lists(
            st.sampled_from(["png", "jpg", "gray", "big", "truncated", "garbage", "text", "empty"]),
            min_size=0,
            max_size=6,
        )
    )
    classes = draw(st.integers(0, 3))
    return kinds, classes


def _write_image(path: Path, kind: str, rng) -> None:
    from tfedge.core.backend import tf

    if kind in ("png", "gray", "big", "truncated"):
        size = 20 if kind == "big" else 8
        channels = 1 if kind == "gray" else 3
        image = rng.integers(0, 255, (size, size, channels), dtype=np.uint8)
        data = tf.io.encode_png(image).numpy()
        path.with_suffix(".png").write_bytes(
            data[: len(data) // 2] if kind == "truncated" else data
        )
    elif kind == "jpg":
        image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        path.with_suffix(".jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
    elif kind == "garbage":
        path.with_suffix(".jpg").write_bytes(rng.bytes(64))
    elif kind == "text":
        path.with_suffix(".txt").write_text("not an image")


@given(folder=image_folders())
@FUZZ
def test_image_folders_with_broken_files(small_models, tmp_path_factory, capsys, folder):
    kinds, classes = folder
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(len(kinds))
    for index, kind in enumerate(kinds):
        cls = root / f"class{index % max(classes, 1)}"
        cls.mkdir(exist_ok=True)
        if kind != "empty":
            _write_image(cls / f"{index}", kind, rng)
    model = small_models["conv"]
    run_inprocess(["bench", model, "--data", root, "--runs", 1, "--warmup", 0], capsys, [root])


@given(
    mode=st.sampled_from(["int8", "int16x8", "float16", "dynamic", "float32"]),
    io=st.sampled_from([None, "int8", "uint8", "float32"]),
    layers=st.lists(st.sampled_from(["fc1", "logits", "fuzz_dense", "fc", "", "*", "FC1"])),
    option=st.sampled_from(["--int16", "--keep-float"]),
    weights=st.sampled_from(["int8", "int4"]),
    extra=st.sampled_from(
        [[], ["--mean", "127.5"], ["--mean", "x,y"], ["--std", "0"], ["--target", "nowhere"]]
    ),
)
@settings(FUZZ, max_examples=max(EXAMPLES // 3, 4))
def test_convert_options(
    small_models, tmp_path_factory, capsys, mode, io, layers, option, weights, extra
):
    folder = tmp_path_factory.mktemp("convert")
    calib = folder / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).random((16, 8), dtype=np.float32))
    model = small_models["dense_keras"]
    argv = ["convert", model, "--calib", calib, "--mode", mode, "--weights", weights, *extra]
    argv += ["--io", io] if io else []
    for layer in layers:
        argv += [option, layer]
    status, _ = run_inprocess([*argv, "-o", folder / "out.tflite"], capsys, [model, calib])
    if status == 0:
        assert (folder / "out.tflite").stat().st_size > 0


@given(
    runs=st.integers(-2, 3),
    warmup=st.integers(-1, 2),
    threads=st.integers(-1, 3),
    device=st.sampled_from(
        ["local", "ssh://", "ssh://127.0.0.1:1", "http://x", "tcp://", "ssh://user@", "", "ssh:"]
    ),
    delegate=st.sampled_from([None, "edgetpu", "gpu"]),
)
@FUZZ
def test_bench_options(small_models, capsys, runs, warmup, threads, device, delegate):
    model = small_models["dense"]
    argv = ["bench", model, "--runs", runs, "--warmup", warmup, "--threads", threads]
    argv += ["--device", device] + (["--delegate", delegate] if delegate else [])
    run_inprocess(argv, capsys, [model])


YAML_PIECES = st.sampled_from(
    [
        "stages: [qat]",
        "stages:\n  - {name: prune, sparsity: 0.8}",
        "stages:\n  - {name: prune, sparsity: 7}",
        "stages:\n  - {name: prune, sparsity: [1, 2]}",
        "stages:\n  - {name: prnue}",
        "stages:\n  - {name: cluster, clusters: 1}",
        "stages:\n  - {name: qat, bogus: 1}",
        "stages: {}",
        "stages: qat",
        "stage: [qat]",
        "train: {epochs: -1}",
        "train: {epochs: 2, batch_size: 0}",
        "train: {learnig_rate: 0.1}",
        "convert: {mode: int3}",
        "convert: {int16: [fc1]}",
        "extra: 1",
        "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nstages: [*b, *b]",
        "- just a list",
        "{{{",
        "\x00\x01",
        "",
        "model: digits_cnn",
    ]
)


@given(pieces=st.lists(YAML_PIECES, min_size=1, max_size=4))
@FUZZ
def test_recipes(tmp_path_factory, pieces):
    from tfedge.core.errors import TfedgeError
    from tfedge.models.recipe import load_recipe

    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text("\n".join(pieces))
    before = path.read_bytes()
    try:
        recipe = load_recipe(path)
    except TfedgeError as exc:
        assert len(str(exc)) < 1000 and len(exc.hint or "") < 2000
    else:
        assert isinstance(recipe["stages"], list)
        assert all(isinstance(stage, dict) and "name" in stage for stage in recipe["stages"])
    assert path.read_bytes() == before


def _mutate(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    kind = rng.choice(["flip", "bytes", "truncate", "int32", "splice", "zero"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        start = rng.randrange(len(data))
        data[start : start + 8] = bytes(rng.randrange(256) for _ in range(8))
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "int32":
        at = rng.randrange(0, max(len(data) - 4, 1)) & ~3
        value = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, len(data), len(data) + 4])
        data[at : at + 4] = value.to_bytes(4, "little")
    elif kind == "splice":
        start, length = rng.randrange(len(data)), rng.randint(1, 64)
        data[start:start] = data[start : start + length]
    else:
        start = rng.randrange(len(data))
        data[start : start + rng.randint(1, 32)] = bytes(32)
    return bytes(data)


@pytest.mark.parametrize("command", ["inspect", "bench", "compare"])
def test_mutated_tflite_files(small_models, tmp_path, command):
    rng = random.Random(f"tflite-{command}")
    blob = small_models["dense"].read_bytes()
    for index in range(MUTANTS):
        path = tmp_path / f"mutant{index}.tflite"
        path.write_bytes(_mutate(blob, rng))
        argv = {
            "inspect": ["inspect", path, "--json"],
            "bench": ["bench", path, "--runs", 1, "--warmup", 0],
            "compare": ["compare", small_models["dense"], path, "--samples", 2],
        }[command]
        run_process(argv, [path, small_models["dense"]])


def test_mutated_npz_files(small_models, tmp_path):
    rng = random.Random("npz")
    source = tmp_path / "good.npz"
    np.savez(
        source, x=np.random.default_rng(0).random((6, 8), dtype=np.float32), y=np.arange(6) % 3
    )
    blob = source.read_bytes()
    for index in range(MUTANTS):
        path = tmp_path / f"mutant{index}.npz"
        path.write_bytes(_mutate(blob, rng))
        run_process(["bench", small_models["dense"], "--data", path, "--runs", 1], [path])
