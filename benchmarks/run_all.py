"""`make bench`: run every benchmark, then put their tables into the README's results section.

Each ``benchmarks/bench_*.py`` writes ``benchmarks/results/<name>.md`` (a markdown table) and
``<name>.json``. A benchmark that fails keeps its previous table and is reported at the end.

Usage: python benchmarks/run_all.py [NAME ...]   (names such as runtime, compression)
"""

import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main(argv) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.time()
        status = subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode
        print(f"== {script.name}: exit {status} in {time.time() - started:.0f} s", flush=True)
        if status != 0:
            failed.append(script.name)
    update_readme()
    if failed:
        print(f"failed or missed a target: {', '.join(failed)}")
    return 1 if failed else 0


def update_readme() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        return
    tables = [p.read_text().strip() for p in sorted(RESULTS.glob("*.md"))]
    machine = f"{platform.machine()}, {platform.python_version()}, {_cpu()}"
    body = f"Machine: {machine}.\n\n" + "\n\n".join(tables)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
