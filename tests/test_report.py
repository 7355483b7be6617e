"""`tfedge report`: one self-contained HTML page, checked in a real headless browser."""

import json
import re

import numpy as np
import pytest

from tfedge.cli import main
from tfedge.reports.plots import Point, pareto_front

pytestmark = pytest.mark.slow

PLOTS = ("plot-accuracy-size", "plot-accuracy-latency", "plot-latency")


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_clean_error(status, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1, err
    assert lines and lines[0].startswith("Error: ") and "Traceback" not in err, err
    assert sum(line.startswith("Error: ") for line in lines) == 1, err
    for needle in needles:
        assert needle.lower() in err.lower(), err


@pytest.fixture(scope="module")
def benched(tmp_path_factory, trained_digits_cnn, digits, digits_tflite, test_npz):
    """Real bench results of the digits CNN as float32, int8 and int16x8, with an analysis JSON.

    The analysis uses the design's ``tfedge analyze --json`` format, filled from real
    measurements: the per-layer error of the int8 model against float32 (``tfedge.commands.compare``)
    and, as fixes, the whole-model int16x8 and float32 conversions benched here.
    """
    from tfedge.commands.bench import bench
    from tfedge.commands.compare import compare
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model

    root = tmp_path_factory.mktemp("report")
    int16 = root / "digits_int16x8.tflite"
    int16.write_bytes(convert(trained_digits_cnn, mode="int16x8", calib=digits[0]))
    models = [digits_tflite["float32"], digits_tflite["int8"], int16]
    results = root / "bench.json"
    report = bench(models, data=test_npz, runs=60, warmup=5, json_path=results)
    diff = compare(digits_tflite["float32"], digits_tflite["int8"], data=test_npz)
    layers = [
        {
            "name": t["name"],
            "op": t["op"],
            "rmse_over_scale": t["rmse"] / t["step"],
            "max_abs_error": t["max_abs_diff"],
            "cosine": t["cosine"],
        }
        for t in diff["tensors"]
        if t["step"]
    ]
    fixes = []
    for row, name in zip(report["results"], ("keep float", "none (int8)", "int16x8"), strict=True):
        info = inspect_model(row["model"])
        fixes.append(
            {
                "fix": name,
                "accuracy": row["accuracy"],
                "size_bytes": row["size_bytes"],
                "p50_ms": row["latency_ms"]["p50"],
                "fully_integer": info["fully_integer"],
                "edgetpu_compatible": info["edgetpu"]["compatible"],
            }
        )
    # a candidate analyze could not build is listed with its error (the shape analyze writes)
    fixes.append({"fix": "keep_float:all", "error": "the TFLite converter failed (int8): no op"})
    analysis = root / "analysis.json"
    analysis.write_text(
        json.dumps(
            {
                "model": "digits_cnn.keras",
                "layers": layers,
                "worst": sorted(layers, key=lambda r: -r["rmse_over_scale"]),
                "fixes": fixes,
                "chosen": "int16x8",
            }
        )
    )
    return {"results": results, "analysis": analysis, "rows": report["results"], "root": root}


def test_bench_keeps_every_run_latency(benched):
    rows = json.loads(benched["results"].read_text())["results"]
    for row in rows:
        runs = row["latencies_ms"]
        assert len(runs) == row["runs"] == 60 and all(t > 0 for t in runs)
        assert row["latency_ms"]["p50"] == pytest.approx(np.percentile(runs, 50), abs=1e-3)
        assert row["latency_ms"]["max"] == pytest.approx(max(runs), abs=1e-3)


def test_report_of_bench_and_analysis_in_a_browser(benched, browser, capsys, tmp_path):
    out = tmp_path / "report.html"
    status, printed, err = run_cli(
        capsys, "report", benched["results"], benched["analysis"], "-o", out
    )
    assert status == 0, err
    assert str(out) in printed
    page = browser.check_report(out, (*PLOTS, "plot-layers-1"), table_rows=3)
    dom = page["dom"]
    for name in ("digits_float32.tflite", "digits_int8.tflite", "digits_int16x8.tflite"):
        assert name in dom
    assert 'class="fixes"' in dom and "int16x8 (chosen)" in dom
    assert "failed: the TFLite converter failed (int8): no op" in dom
    assert "ai-edge-litert" in dom and 'id="environment"' in dom
    assert "Pareto front" in dom


def test_browser_check_sees_a_request_leave_the_page(browser, tmp_path):
    """The control for the no-request check: a page with a remote image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!doctype html><p>x</p><img src="http://tfedge-probe.invalid/pixel.png">')
    assert browser.open(page, width=400, height=300)["requests"]


def test_emulated_device_is_marked(benched, tmp_path):
    from tfedge.reports.page import render_html

    local = benched["rows"][1]
    pi = {**local, "device": {**local["device"], "name": "ssh://pi", "emulated": True}}
    text = render_html([local, pi], "two devices")
    assert "emulated (qemu)" in text and "Emulated device" in text
    assert re.search(r"<td>[0-9.]+ \*</td>", text), "the emulated latency has no * mark"
    assert "digits_int8.tflite @ ssh://pi" in text and "digits_int8.tflite @ local" in text


def test_old_results_without_latencies_or_accuracy(benched, capsys, tmp_path):
    rows = [
        {k: v for k, v in row.items() if k != "latencies_ms"} | {"accuracy": None}
        for row in benched["rows"]
    ]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"results": rows}))
    out = tmp_path / "old.html"
    status, _, err = run_cli(capsys, "report", old, "-o", out)
    assert status == 0, err
    text = out.read_text()
    assert '<table id="results">' in text and "<svg" not in text
    assert "No per-run latencies" in text and "No accuracy" in text


def test_optimize_report_json_gets_keras_accuracy_and_stages(benched, capsys, tmp_path):
    rows = [
        {**row, "stage": stage, "keras_accuracy": row["accuracy"]}
        for row, stage in zip(benched["rows"], ("float32", "int8", "int16x8"), strict=True)
    ]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"tfedge_version": "x", "results": rows}))
    out = tmp_path / "r.html"
    assert run_cli(capsys, "report", path, "-o", out)[0] == 0
    text = out.read_text()
    assert "<th>Keras accuracy</th>" in text and ">int16x8</td>" in text


def test_the_page_keeps_its_public_names():
    import tfedge
    import tfedge.reports.inputs as inputs
    import tfedge.reports.page as page

    assert page.__all__ == ["load_inputs", "build_report", "render_html", "write_html"]
    assert page.load_inputs is inputs.load_inputs
    assert tfedge.MOVED["report"] == "tfedge.reports.page"


@pytest.mark.parametrize(
    "points, front",
    [
        ([("a", 1, 0.9), ("b", 2, 0.8), ("c", 3, 0.95)], ["a", "c"]),
        ([("a", 1, 0.9), ("b", 1, 0.95)], ["b"]),
        ([("a", 5, 0.99), ("b", 1, 0.5), ("c", 3, 0.7), ("d", 4, 0.6)], ["b", "c", "a"]),
        ([("a", 2, 0.9), ("b", 2, 0.9)], ["a"]),
    ],
)
def test_pareto_front(points, front):
    assert [p.label for p in pareto_front([Point(*p) for p in points])] == front


BAD_INPUTS = {
    "missing file": (None, "not found"),
    "not json": ("this is { not json", "not valid JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff", "JSON"),
    "a JSON list": ("[1, 2, 3]", "not a tfedge result"),
    "inspect output": (json.dumps({"model": "m.tflite", "ops": {"CONV_2D": 1}}), "'layers'"),
    "result without model": (json.dumps({"results": [{"accuracy": 0.9}]}), "results[0]"),
    "latency that is not an object": (
        json.dumps({"results": [{"model": "m", "latency_ms": 3}]}),
        "results[0].latency_ms is int",
    ),
    "a folder": ("<folder>", "folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_report_input(case, capsys, tmp_path):
    content, needle = BAD_INPUTS[case]
    path = tmp_path / "input.json"
    if content == "<folder>":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "report.html"
    status, _, err = run_cli(capsys, "report", path, "-o", out)
    assert_clean_error(status, err, needle, str(path))
    assert not out.exists()


def test_report_needs_an_output(capsys, tmp_path):
    status, _, err = run_cli(capsys, "report", tmp_path / "x.json")
    assert_clean_error(status, err, "-o")


def test_make_bench_writes_results_json_and_report(tmp_path):
    """run_all's last step on the checked-in benchmark results (no benchmark is rerun)."""
    import importlib.util
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("run_all", root / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    results = tmp_path / "results"
    shutil.copytree(root / "benchmarks" / "results", results)
    compression = json.loads((results / "compression.json").read_text())
    stages = list(dict.fromkeys(row["stage"] for row in compression["results"]))
    run_all.write_report(results, tmp_path / "results.json", tmp_path / "report.html")
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [row["stage"] for row in payload["results"]] == stages
    assert set(payload["benchmarks"]) == {p.stem for p in results.glob("*.json")}
    first = [r for r in compression["results"] if r["stage"] == stages[0]]
    assert payload["results"][0]["accuracy"] == pytest.approx(
        np.mean([r["int8_accuracy"] for r in first]), abs=1e-6
    )
    page = (tmp_path / "report.html").read_text()
    assert page.count("<tr") >= len(stages) + 1 and 'id="plot-accuracy-size"' in page


def test_odd_but_valid_values_still_render(capsys, tmp_path):
    """Hand-edited files: text where numbers belong, an analysis without numbers."""
    results = tmp_path / "odd.json"
    row = {"model": "a.tflite", "accuracy": "high", "size_gzip_bytes": "small", "latencies_ms": []}
    results.write_text(json.dumps({"results": [row]}))
    analysis = tmp_path / "analysis.json"
    analysis.write_text(
        json.dumps({"model": "m", "layers": [{"name": "conv", "rmse_over_scale": "n/a"}, 3]})
    )
    out = tmp_path / "odd.html"
    status, _, err = run_cli(capsys, "report", results, analysis, "-o", out)
    assert status == 0, err
    text = out.read_text()
    assert "<td>high</td>" in text and "<svg" not in text and ">conv</td>" in text


@pytest.mark.parametrize("name", ["a$b$c.tflite", "bad$\\frac$.tflite", "x$^{2}_y$ & <b>.tflite"])
def test_file_names_are_text_not_markup(digits_tflite, test_npz, capsys, tmp_path, name):
    """Dollar signs in a file name are not mathtext; the name comes back verbatim, escaped."""
    import html

    model = tmp_path / name
    model.write_bytes(digits_tflite["int8"].read_bytes())
    results, page = tmp_path / "bench.json", tmp_path / "bench.html"
    args = ("bench", model, "--data", test_npz, "--runs", 3, "--warmup", 0)
    status, _, err = run_cli(capsys, *args, "--json", results, "--html", page)
    assert status == 0, err
    report = tmp_path / "report.html"
    status, _, err = run_cli(capsys, "report", results, "-o", report)
    assert status == 0, err
    for written in (page, report):
        text = written.read_text()
        assert 'id="plot-accuracy-size"' in text and 'id="plot-latency"' in text
        # every plot label is the plain name (mathtext would split it into pieces)
        svg = text[text.index("<svg") :]
        assert f">{html.escape(name, quote=False)}<" in svg
