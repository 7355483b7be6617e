"""`make bench`: run every benchmark, then write the README's results section and the report.

Each ``benchmarks/bench_*.py`` writes ``benchmarks/results/<name>.md`` (a markdown table) and
``<name>.json``. A benchmark that fails keeps its previous table and is reported at the end.
Then, in the same run: ``benchmarks/results.json`` (every benchmark's JSON, and the compression
stages as result rows in the ``tfedge bench`` schema), ``benchmarks/report.html`` (``tfedge
report`` of it: table, Pareto plots, latency per run) and the README's results section.

Usage: python benchmarks/run_all.py [NAME ...]   (names such as runtime, compression)
"""

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RESULTS_JSON = HERE / "results.json"
REPORT_HTML = HERE / "report.html"
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
    write_report()
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
    link = (
        f"Plots (accuracy against gzip size and latency with the Pareto front, latency per run): "
        f"[{REPORT_HTML.relative_to(ROOT)}]({REPORT_HTML.relative_to(ROOT)}), one self-contained "
        f"page; all figures: [{RESULTS_JSON.relative_to(ROOT)}]({RESULTS_JSON.relative_to(ROOT)})."
    )
    body = f"Machine: {machine}.\n\n{link}\n\n" + "\n\n".join(tables)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")


def compression_rows(payload: dict) -> list[dict]:
    """One result row per compression stage (``tfedge bench`` schema plus ``stage``).

    Accuracy and sizes are the means over the seeds, as in the README table; the latency
    distribution pools every seed's runs of the stage's model.
    """
    by_stage: dict = {}
    for row in payload.get("results", []):
        by_stage.setdefault(row["stage"], []).append(row)
    rows = []
    for stage, group in by_stage.items():
        runs = [t for r in group for t in r.get("latencies_ms") or []]
        row = {
            "model": stage,
            "stage": stage,
            "keras_accuracy": round(statistics.mean(r["keras_accuracy"] for r in group), 6),
            "accuracy": round(statistics.mean(r["int8_accuracy"] for r in group), 6),
            "size_bytes": round(statistics.mean(r["size_bytes"] for r in group)),
            "size_gzip_bytes": round(statistics.mean(r["size_gzip_bytes"] for r in group)),
            "seeds": [r["seed"] for r in group],
            "fully_integer": all(r["fully_integer"] for r in group),
            "threads": 1,
            "runtime": payload.get("runtime"),
            "device": {"name": "local", **(payload.get("device") or {})},
        }
        if runs:
            ordered = sorted(runs)
            row["latency_ms"] = {
                "mean": round(statistics.mean(runs), 4),
                "min": ordered[0],
                "p50": round(statistics.median(runs), 4),
                "p90": ordered[min(len(runs) - 1, int(0.9 * len(runs)))],
                "p99": ordered[min(len(runs) - 1, int(0.99 * len(runs)))],
                "max": ordered[-1],
            }
            row["latencies_ms"] = runs
            row["runs"] = len(runs)
        rows.append(row)
    return rows


def write_report(results=RESULTS, out_json=RESULTS_JSON, out_html=REPORT_HTML) -> None:
    """Write ``results.json`` (every benchmark, compression stages as rows) and its HTML report."""
    from tfedge.reports.page import write_html
    from tfedge.version import __version__

    benchmarks = {p.stem: json.loads(p.read_text()) for p in sorted(Path(results).glob("*.json"))}
    rows = compression_rows(benchmarks.get("compression", {}))
    payload = {"tfedge_version": __version__, "results": rows, "benchmarks": benchmarks}
    Path(out_json).write_text(json.dumps(payload, indent=1) + "\n")
    settings = benchmarks.get("compression", {}).get("settings", {})
    seeds = ", ".join(map(str, settings.get("seeds", [])))
    write_html(
        out_html,
        rows,
        title=f"tfedge make bench: compressing the digits CNN (int8, means over seeds {seeds})",
    )
    print(f"wrote {out_json} and {out_html}")


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
