"""Packaging: the wheel holds every package and data file, and setuptools has nothing to warn about."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_recipes_targets_and_expected_figures(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            ROOT,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "would be ignored" not in build.stdout + build.stderr
    (wheel,) = tmp_path.glob("tfedge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {p.name for p in (ROOT / "models" / "recipes").glob("*.yaml")}
    targets = {p.name for p in (ROOT / "converters" / "targets").glob("*.yaml")}
    assert recipes and targets
    assert {f"tfedge/models/recipes/{name}" for name in recipes} <= names
    assert {f"tfedge/converters/targets/{name}" for name in targets} <= names
    assert "tfedge/models/expected.json" in names
    assert "tfedge/devices/runner.py" in names
    assert "tfedge/models/search/study.py" in names  # a sub-package of models/
