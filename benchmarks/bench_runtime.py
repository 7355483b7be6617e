"""Does `tfedge bench` measure what LiteRT's own benchmark tool measures?

For a few int8 and float32 models, alternate `tfedge bench` and
`python -m ai_edge_litert.tools.benchmark_litert_model` ROUNDS times on the same file in the same
run (1 thread, same warmup and runs), and compare the medians of their p50s. The tool rounds to
0.01 ms, so only models whose p50 is at least 0.2 ms are compared (rounding then stays under 2.5 %).

Writes benchmarks/results/runtime.json and benchmarks/results/runtime.md.
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS = 5
RUNS = 200
WARMUP = 20


def models(tmp: Path) -> dict:
    from tfedge.converters import convert
    from tfedge.core.backend import keras

    keras.utils.set_random_seed(0)
    L = keras.layers

    def cnn(size, width, name):
        inputs = keras.Input((size, size, 3))
        x = inputs
        for i, w in enumerate((width, width * 2, width * 4)):
            x = L.Conv2D(w, 3, padding="same", activation="relu", name=f"conv{i}a")(x)
            x = L.Conv2D(w, 3, padding="same", activation="relu", name=f"conv{i}b")(x)
            x = L.MaxPooling2D()(x)
        x = L.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, L.Dense(10, activation="softmax")(x), name=name)

    out = {}
    for model in (cnn(32, 16, "cnn32"), cnn(64, 32, "cnn64")):
        calib = np.random.rand(64, *model.input_shape[1:]).astype(np.float32)
        for mode in ("int8", "float32"):
            path = tmp / f"{model.name}_{mode}.tflite"
            path.write_bytes(convert(model, mode=mode, calib=calib))
            out[f"{model.name} {mode}"] = path
    return out


def tfedge_p50(path: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tfedge",
                "bench",
                str(path),
                "--runs",
                str(RUNS),
                "--warmup",
                str(WARMUP),
                "--threads",
                "1",
                "--json",
                str(result),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(result.read_text())["results"][0]["latency_ms"]["p50"]


def litert_p50(path: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ai_edge_litert.tools.benchmark_litert_model",
                f"--model={path}",
                f"--num_runs={RUNS}",
                f"--warmup_runs={WARMUP}",
                "--num_threads=1",
                f"--result_json={result}",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(result.read_text())["latency"]["median_ms"]


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models(Path(tmp)).items():
            ours, theirs = [], []
            for _ in range(ROUNDS):
                ours.append(tfedge_p50(path))
                theirs.append(litert_p50(path))
            a, b = statistics.median(ours), statistics.median(theirs)
            rows.append(
                {
                    "model": name,
                    "tfedge_p50_ms": a,
                    "litert_p50_ms": b,
                    "ratio": round(a / b, 3) if b else None,
                    "rounds": ROUNDS,
                }
            )
            print(
                f"{name}: tfedge {a:.3f} ms, LiteRT tool {b:.2f} ms, ratio {a / b:.3f}", flush=True
            )
    compared = [r for r in rows if r["litert_p50_ms"] >= 0.2]
    ok = bool(compared) and all(abs(r["ratio"] - 1) <= 0.15 for r in compared)
    (RESULTS / "runtime.json").write_text(
        json.dumps({"rows": rows, "within_15_percent": ok}, indent=2)
    )
    lines = [
        "### `tfedge bench` p50 vs LiteRT's `benchmark_litert_model` (1 thread, medians of "
        f"{ROUNDS} alternating rounds of {RUNS} runs)",
        "",
        "| model | tfedge p50 ms | LiteRT tool p50 ms | ratio |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['tfedge_p50_ms']:.3f} | {r['litert_p50_ms']:.2f} | {r['ratio']:.3f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Target: within 15 % on every model with p50 >= 0.2 ms: **{'met' if ok else 'NOT met'}**.",
    ]
    (RESULTS / "runtime.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
