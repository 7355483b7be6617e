"""The device harness on the emulated Raspberry Pi 4: same answers as the host, bit for bit?

Brings the Pi up (`scripts/pi-device.sh up`), converts the digits reference CNN and two zoo
models to int8 (and the CNN to float32), benches them on `local` and `ssh://tfedge-pi` in one
fleet call, and compares accuracy, outputs_sha256 and predictions_sha256. Emulated latency is
150-500x a real Pi's and ranks models wrongly, so no latency is reported here.

Writes benchmarks/results/device.json and benchmarks/results/device.md.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
URL = "ssh://tfedge-pi"


def main() -> int:
    subprocess.run(["bash", "scripts/pi-device.sh", "up"], cwd=ROOT, check=True)
    from tfedge.converters import convert
    from tfedge.core.digits import load_digits
    from tfedge.devices.fleet import bench_fleet
    from tfedge.models.zoo import build, train

    train_data, test_data = load_digits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = []
        for name in ("digits_cnn", "ds_cnn", "resnet8"):
            model = train(build(name), train_data, epochs=10)
            for mode in ("int8", "float32") if name == "digits_cnn" else ("int8",):
                path = tmp / f"{name}_{mode}.tflite"
                path.write_bytes(convert(model, mode=mode, calib=train_data))
                models.append(path)
        data = test_data.take(100).save(tmp / "test100.npz")
        got = bench_fleet(
            ["local", URL],
            [str(p) for p in models],
            str(data),
            warmup=0,
            runs=1,
            ssh_config=str(ROOT / ".device" / "ssh_config"),
        )
        by = {(r["device"]["name"], Path(r["model"]).name): r for r in got}
        for path in models:
            host, pi = by[("local", path.name)], by[(URL, path.name)]
            if host.get("error") or pi.get("error"):
                rows.append({"model": path.name, "error": host.get("error") or pi.get("error")})
                continue
            rows.append(
                {
                    "model": path.name,
                    "pi_machine": pi["device"]["machine"],
                    "pi_cpu": pi["device"]["cpu"],
                    "host_accuracy": host["accuracy"],
                    "pi_accuracy": pi["accuracy"],
                    "outputs_equal": host["outputs_sha256"] == pi["outputs_sha256"],
                    "predictions_equal": host["predictions_sha256"] == pi["predictions_sha256"],
                }
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "device.json").write_text(json.dumps({"rows": rows}, indent=2))
    lines = [
        "### Host vs the emulated Raspberry Pi 4 (qemu cortex-a72, ai-edge-litert, 100 test digits)",
        "",
        "| model | Pi machine / CPU | host accuracy | Pi accuracy | outputs_sha256 equal | predictions_sha256 equal |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['pi_machine']} / {r['pi_cpu']} | {r['host_accuracy']:.2%} | "
            f"{r['pi_accuracy']:.2%} | {'yes' if r['outputs_equal'] else 'NO'} | "
            f"{'yes' if r['predictions_equal'] else 'NO'} |"
        )
    lines += [
        "",
        "Latency on the emulated Pi is not a device figure and is not reported. float32 outputs "
        "differ in their last bits between x86 and ARM float arithmetic. An int8 `NO` in "
        "outputs_sha256 is SOFTMAX: LiteRT's aarch64 build computes it from a 16-bit lookup table, "
        "its x86 build from a float one, so a probability can round one step apart; "
        "predictions_sha256 compares top-1 classes.",
    ]
    (RESULTS / "device.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = all(
        "error" not in r
        and r["pi_machine"] == "aarch64"
        and r["predictions_equal"]
        and r["host_accuracy"] == r["pi_accuracy"]
        for r in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
