"""`tfedge demo`, the first thing a new user runs: the whole path on the bundled digits."""

import json

import pytest

from tfedge.cli import main

pytestmark = pytest.mark.slow


def test_demo_writes_a_report_with_float_int8_and_compressed(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
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
    assert (tmp_path / "report.html").read_text().count("<tr>") == 4
