"""The command line end to end: good paths, and one clean ``Error:`` line for every bad input."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tfedge.cli import main


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_clean_error(status, err, *needles):
    assert status == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: "), err
    assert sum(line.startswith("Error: ") for line in lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in err.lower(), err


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, digits_cnn_path):
    root = tmp_path_factory.mktemp("bad")
    text = root / "notes.keras"
    text.write_text("this is not a model\n")
    truncated = root / "truncated.keras"
    truncated.write_bytes(digits_cnn_path.read_bytes()[:2000])
    empty_h5 = root / "empty.h5"
    empty_h5.write_bytes(b"")
    no_x = root / "no_x.npz"
    np.savez(no_x, images=np.zeros((3, 16, 16, 1), np.float32))
    wrong_shape = root / "wrong_shape.npz"
    np.savez(wrong_shape, x=np.zeros((3, 8, 8, 3), np.float32), y=np.zeros(3, np.int64))
    not_npz = root / "data.npz"
    not_npz.write_text("1,2,3\n")
    text_tflite = root / "model.tflite"
    text_tflite.write_text("hello")
    zip_no_config = root / "other.keras"
    with zipfile.ZipFile(zip_no_config, "w") as archive:
        archive.writestr("readme.txt", "hi")
    return {
        "text": text,
        "truncated": truncated,
        "empty_h5": empty_h5,
        "no_x": no_x,
        "wrong_shape": wrong_shape,
        "not_npz": not_npz,
        "text_tflite": text_tflite,
        "zip_no_config": zip_no_config,
        "root": root,
    }


def test_convert_inspect_bench_round_trip(capsys, digits_cnn_path, train_npz, test_npz, tmp_path):
    out_model = tmp_path / "out" / "digits.tflite"
    status, out, err = run_cli(
        capsys, "convert", digits_cnn_path, "--calib", train_npz, "-o", out_model
    )
    assert status == 0, err
    assert out_model.is_file() and "fully integer: yes" in out

    status, out, _ = run_cli(capsys, "inspect", out_model, "--json")
    assert status == 0
    info = json.loads(out)
    assert info["fully_integer"] and info["static_shapes"] and info["float_ops"] == []
    assert info["input"][0] == {**info["input"][0], "dtype": "int8", "shape": [1, 16, 16, 1]}

    status, out, _ = run_cli(capsys, "inspect", out_model)
    assert status == 0 and "CONV_2D" in out

    results = tmp_path / "bench.json"
    status, out, err = run_cli(
        capsys,
        "bench",
        out_model,
        "--data",
        test_npz,
        "--runs",
        20,
        "--warmup",
        2,
        "--json",
        results,
    )
    assert status == 0, err
    row = json.loads(results.read_text())["results"][0]
    assert row["accuracy"] > 0.95 and row["samples"] == 397
    assert "digits.tflite" in out


BAD_CASES = {
    "missing model": (["convert", "{root}/missing.keras", "-o", "{root}/o.tflite"], "not found"),
    "text file named .keras": (["convert", "{text}", "-o", "{root}/o.tflite"], "zip"),
    "truncated .keras": (["convert", "{truncated}", "-o", "{root}/o.tflite"], "keras"),
    "zip that is not a Keras archive": (
        ["convert", "{zip_no_config}", "-o", "{root}/o.tflite"],
        "config.json",
    ),
    "empty .h5": (["convert", "{empty_h5}", "-o", "{root}/o.tflite"], "empty"),
    "npz without x": (
        ["convert", "{model}", "--calib", "{no_x}", "-o", "{root}/o.tflite"],
        "expected 'x'",
    ),
    "npz with the wrong shape": (
        ["convert", "{model}", "--calib", "{wrong_shape}", "-o", "{root}/o.tflite"],
        "shape",
    ),
    "data file that is not npz": (
        ["convert", "{model}", "--calib", "{not_npz}", "-o", "{root}/o.tflite"],
        "npz",
    ),
    "unknown mode": (["convert", "{model}", "--mode", "int4", "-o", "{root}/o.tflite"], "int4"),
    "int8 without calibration": (["convert", "{model}", "-o", "{root}/o.tflite"], "--calib"),
    "integer io with float activations": (
        ["convert", "{model}", "--mode", "dynamic", "--io", "int8", "-o", "{root}/o.tflite"],
        "Error: --io: input/output type int8 needs an integer model",
    ),
    "tflite passed to convert": (["convert", "{text_tflite}", "-o", "{root}/o.tflite"], "tflite"),
    "text file named .tflite": (["inspect", "{text_tflite}"], "tflite"),
    "bench of a keras file": (["bench", "{model}"], "not a tflite"),
    "bench missing model": (["bench", "{root}/nothing.tflite"], "not found"),
    "unknown option": (["convert", "{model}", "--frobnicate"], "frobnicate"),
    "per-layer int16 without calibration": (
        ["convert", "{model}", "--int16", "conv1", "-o", "{root}/o.tflite"],
        "--calib",
    ),
    "int4 weights with float16": (
        ["convert", "{model}", "--weights", "int4", "--mode", "float16", "-o", "{root}/o.tflite"],
        "--mode float16",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gives_one_error_line(case, capsys, bad_files, digits_cnn_path):
    argv, needle = BAD_CASES[case]
    names = {k: str(v) for k, v in bad_files.items()} | {"model": str(digits_cnn_path)}
    status, _, err = run_cli(capsys, *[a.format(**names) for a in argv])
    assert_clean_error(status, err, needle)
    assert not (bad_files["root"] / "o.tflite").exists()


def test_bad_data_for_bench(capsys, digits_tflite, bad_files):
    status, _, err = run_cli(
        capsys, "bench", digits_tflite["int8"], "--data", bad_files["wrong_shape"]
    )
    assert_clean_error(status, err, "shape")


def test_truncated_tflite_gives_clean_errors(capsys, digits_tflite, tmp_path):
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(digits_tflite["int8"].read_bytes()[:600])
    status, _, err = run_cli(capsys, "inspect", truncated)
    assert_clean_error(status, err)
    status, _, err = run_cli(capsys, "bench", truncated, "--runs", 1)
    assert status == 1 and "Traceback" not in err and "Error:" in err


def test_failed_model_in_a_batch_keeps_the_others(capsys, digits_tflite, tmp_path, test_npz):
    broken = tmp_path / "broken.tflite"
    data = bytearray(digits_tflite["int8"].read_bytes())
    broken.write_bytes(bytes(data[:8]) + b"\0" * 64)
    results = tmp_path / "r.json"
    status, _, err = run_cli(
        capsys,
        "bench",
        digits_tflite["int8"],
        broken,
        "--data",
        test_npz,
        "--runs",
        5,
        "--json",
        results,
    )
    assert status == 1 and "broken.tflite" in err and "Traceback" not in err
    rows = json.loads(results.read_text())["results"]
    assert len(rows) == 2
    good = [r for r in rows if not r.get("error")]
    assert len(good) == 1 and good[0]["accuracy"] > 0.9


def test_existing_output_survives_a_failed_convert(capsys, bad_files, tmp_path):
    target = tmp_path / "keep.tflite"
    target.write_bytes(b"precious")
    status, _, err = run_cli(capsys, "convert", bad_files["text"], "-o", target)
    assert status == 1
    assert target.read_bytes() == b"precious"


def test_console_script_shows_no_traceback_or_tensorflow_noise(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfedge",
            "convert",
            str(tmp_path / "nope.keras"),
            "-o",
            str(tmp_path / "x.tflite"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: model not found")
    assert "Traceback" not in result.stderr
    assert all(line.startswith(("Error:", "Hint:")) for line in result.stderr.splitlines())


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfedge",
            "--debug",
            "convert",
            str(tmp_path / "nope.keras"),
            "-o",
            "x.tflite",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_import_tfedge_does_not_import_tensorflow():
    code = "import tfedge, tfedge.cli, tfedge.devices.runner, tfedge.commands.bench, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_convert_with_labels_embeds_metadata(capsys, digits_cnn_path, train_npz, tmp_path):
    from tfedge.converters.metadata import read_metadata

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    out_model = tmp_path / "with_labels.tflite"
    status, _, err = run_cli(
        capsys,
        "convert",
        digits_cnn_path,
        "--calib",
        train_npz,
        "--labels",
        labels,
        "-o",
        out_model,
    )
    assert status == 0, err
    meta = read_metadata(out_model.read_bytes())
    assert meta["labels"] == [f"digit {i}" for i in range(10)]
    assert meta["input_mean"] == [0.0] and meta["input_std"] == [255.0]
    status, _, err = run_cli(
        capsys,
        "convert",
        digits_cnn_path,
        "--calib",
        train_npz,
        "--labels",
        labels,
        "--mean",
        "x",
        "-o",
        out_model,
    )
    assert_clean_error(status, err, "--mean")


@pytest.mark.parametrize("url", ["ssh://127.0.0.1:1", "ftp://somewhere", "ssh://"])
def test_unreachable_or_malformed_device(url, capsys, digits_tflite, tmp_path):
    results = tmp_path / "r.json"
    status, _, err = run_cli(
        capsys, "bench", digits_tflite["int8"], "--device", url, "--json", results
    )
    assert_clean_error(status, err)
    if results.exists():
        assert all(row.get("error") for row in json.loads(results.read_text())["results"])


def test_bench_html_report_in_a_browser(capsys, digits_tflite, test_npz, tmp_path, browser):
    page, results = tmp_path / "bench.html", tmp_path / "bench.json"
    status, out, err = run_cli(
        capsys,
        "bench",
        digits_tflite["float32"],
        digits_tflite["int8"],
        "--data",
        test_npz,
        "--runs",
        40,
        "--json",
        results,
        "--html",
        page,
    )
    assert status == 0, err
    assert f"report: {page}" in out
    rows = json.loads(results.read_text())["results"]
    assert [len(row["latencies_ms"]) for row in rows] == [40, 40]
    shown = browser.check_report(
        page, ("plot-accuracy-size", "plot-accuracy-latency", "plot-latency"), table_rows=2
    )
    assert "digits_int8.tflite" in shown["dom"]


@pytest.mark.parametrize(
    "labels, shown",
    [
        (99, ("99..99", "10 classes (0..9)")),
        (10, ("10..10", "10 classes (0..9)")),
        # a negative label is no class id of any model: refused when the data is read
        (-1, ("label 0 is -1", "class ids start at 0")),
    ],
)
def test_bench_labels_outside_the_model_classes(
    capsys, digits_tflite, digits, tmp_path, labels, shown
):
    data = tmp_path / "labels.npz"
    np.savez(data, x=digits[1].x[:20], y=np.full(20, labels))
    status, out, err = run_cli(capsys, "bench", digits_tflite["int8"], "--data", data, "--runs", 1)
    assert_clean_error(status, err, *shown)
    assert "accuracy" not in out


def test_bench_one_output_binary_classifier(capsys, binary_digits, test_npz, tmp_path):
    results = tmp_path / "binary.json"
    argv = ["bench", binary_digits["tflite"], "--runs", 1, "--json", results]
    status, _, err = run_cli(capsys, *argv, "--data", binary_digits["test_npz"])
    assert status == 0, err
    (row,) = json.loads(results.read_text())["results"]
    assert row["accuracy"] > 0.8
    status, _, err = run_cli(capsys, *argv, "--data", test_npz)  # digit labels 0..9
    assert_clean_error(status, err, "0..9", "2 classes", "binary")
