"""`tfedge demo`, the first thing a new user runs: the whole path on the bundled digits."""

import contextlib
import io
import json

import pytest

from tfedge.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["demo", "-o", str(out)])
    return status, out, printed.getvalue()


def test_demo_writes_a_report_with_float_int8_and_compressed(demo_out):
    status, tmp_path, printed = demo_out
    assert status == 0
    assert "int8" in printed and "report.json" in printed
    rows = {
        row["stage"]: row for row in json.loads((tmp_path / "report.json").read_text())["results"]
    }
    assert list(rows) == ["float32", "int8", "pruned 80% + QAT int8"]
    f32, i8, small = rows["float32"], rows["int8"], rows["pruned 80% + QAT int8"]
    assert f32["accuracy"] > 0.95 and f32["samples"] == 397
    assert i8["accuracy"] >= f32["accuracy"] - 0.01
    assert i8["size_bytes"] * 3 < f32["size_bytes"]
    assert small["accuracy"] >= f32["accuracy"] - 0.02
    assert small["size_gzip_bytes"] * 6 < f32["size_gzip_bytes"]


def test_demo_report_page_in_a_browser(demo_out, browser):
    status, out, _ = demo_out
    assert status == 0
    page = browser.check_report(
        out / "report.html",
        ("plot-accuracy-size", "plot-accuracy-latency", "plot-latency"),
        table_rows=3,
    )
    assert "pruned 80% + QAT int8" in page["dom"]
