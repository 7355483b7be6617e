"""One of each: the helpers the project keeps once are not written again inline elsewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path
    for folder in ("tfedge", "models", "converters")
    for path in (ROOT / folder).rglob("*.py")
    if not path.name.endswith("_generated.py")
)
# Another change switches these to the shared helpers.
PENDING = set()


def _code(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "pattern,home",
    [
        # an exception's first line: tfedge.core.errors.first_line
        (
            r"str\(\w+\)(?:\.strip\(\))?\.splitlines\(\)\[0\]|def _?first_line",
            "tfedge/core/errors.py",
        ),
        # a file written whole, through a temporary name: tfedge.core.files.atomic_file
        (r"os\.replace\(|tempfile\.mkstemp\(|os\.chmod\(", "tfedge/core/files.py"),
        # the error statistics and their SQNR: tfedge.core.error_stats.ErrorStats
        (r"log10\(", "tfedge/core/error_stats.py"),
    ],
)
def test_a_shared_helper_is_written_once(pattern, home):
    found = [
        str(path.relative_to(ROOT))
        for path in SOURCES
        if re.search(pattern, _code(path)) and str(path.relative_to(ROOT)) not in PENDING
    ]
    assert found == [home]
