"""The device transport: URLs, the local device, and the emulated Raspberry Pi 4 over ssh.

Tests marked ``device`` use the emulated Pi of ``scripts/pi-device.sh`` (brought up by the ``pi``
fixture; set ``TFEDGE_SKIP_DEVICE=1`` to skip them). Emulated inference is 150-500x slower than
the host, so they use few runs and a small data subset; they prove the harness (transport,
caching, runtime discovery, bit-exact outputs, error paths), never latency.
"""

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tfedge.core.errors import DeviceError
from tfedge.devices import kinds
from tfedge.devices.fleet import bench_fleet, bench_on_device
from tfedge.devices.protocol import LocalDevice, RemoteError
from tfedge.devices.ssh import SshDevice, parse_device

ROOT = Path(__file__).resolve().parents[1]
PI_URL = "ssh://tfedge-pi"


# ------------------------------------------------------------------------------------ fixtures


@dataclass
class Pi:
    """The running emulated Pi: its ssh config, alias, port, key and sshd pid."""

    config: Path
    port: int
    key: Path
    sshd_pid: int

    def ssh(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-F", str(self.config), "tfedge-pi", command],
            capture_output=True,
            text=True,
            timeout=60,
            **kwargs,
        )

    def device(self, **options) -> SshDevice:
        return parse_device(PI_URL, ssh_config=self.config, **options)

    def write_config(self, path: Path, alias: str, **entries) -> Path:
        """An ssh config with one Host entry for the Pi, with some entries replaced."""
        values = {
            "HostName": "127.0.0.1",
            "Port": str(self.port),
            "User": "root",
            "IdentityFile": str(self.key),
            "UserKnownHostsFile": str(self.config.parent / "known_hosts"),
            "StrictHostKeyChecking": "yes",
            "IdentitiesOnly": "yes",
            "BatchMode": "yes",
        }
        values.update({k: str(v) for k, v in entries.items()})
        path.write_text(f"Host {alias}\n" + "".join(f"    {k} {v}\n" for k, v in values.items()))
        return path


@pytest.fixture(scope="session")
def pi():
    """The emulated Pi (``bash scripts/pi-device.sh up``); failing to bring it up is a failure.

    A device this session brought up is taken down when the session ends; one that was already
    up (``make device-up``, or CI's early start) is left as it was.
    """
    if os.environ.get("TFEDGE_SKIP_DEVICE") == "1":
        pytest.skip("TFEDGE_SKIP_DEVICE=1: the emulated Raspberry Pi is not brought up")
    was_up = (
        subprocess.run(
            ["bash", "scripts/pi-device.sh", "status"], cwd=ROOT, capture_output=True
        ).returncode
        == 0
    )
    proc = subprocess.run(
        ["bash", "scripts/pi-device.sh", "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"`bash scripts/pi-device.sh up` failed:\n{proc.stderr}"
    device_dir = Path(os.environ.get("TFEDGE_DEVICE_DIR", ROOT / ".device"))
    if not device_dir.is_absolute():
        device_dir = ROOT / device_dir
    config = device_dir / "ssh_config"
    port = next(int(line.split()[1]) for line in config.read_text().splitlines() if "Port " in line)
    yield Pi(config, port, device_dir / "id_ed25519", int((device_dir / "sshd.pid").read_text()))
    if not was_up:
        subprocess.run(
            ["bash", "scripts/pi-device.sh", "down"], cwd=ROOT, capture_output=True, timeout=120
        )


@pytest.fixture(scope="module")
def small_npz(digits, tmp_path_factory):
    """40 test digits (emulated inference is slow)."""
    path = tmp_path_factory.mktemp("remote-data") / "digits 40.npz"
    np.savez(path, x=digits[1].x[:40], y=digits[1].y[:40])
    return path


@pytest.fixture(scope="module")
def tiny_model(digits, tmp_path_factory):
    """A tiny int8 model with fixed random weights (seed 0): the same file every session."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Input((16, 16, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    path = tmp_path_factory.mktemp("remote-models") / "tiny.tflite"
    path.write_bytes(convert(model, mode="int8", calib=digits[0]))
    return path


def unique_copy(model: Path, folder: Path) -> Path:
    """The model with a few unique trailing bytes (still valid): a new sha256 for the cache."""
    copy = folder / f"unique-{uuid.uuid4().hex[:8]}.tflite"
    copy.write_bytes(model.read_bytes() + uuid.uuid4().bytes)
    return copy


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def errors_of(rows):
    return [row for row in rows if row.get("error")]


# ------------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "url, host, user, port",
    [
        ("ssh://tfedge-pi", "tfedge-pi", None, None),
        ("ssh://pi@raspberrypi.local:2222", "raspberrypi.local", "pi", 2222),
        ("ssh://root@192.168.1.20", "192.168.1.20", "root", None),
        ("ssh://[fe80::1]:22", "fe80::1", None, 22),
    ],
)
def test_parse_device_accepts_ssh_urls(url, host, user, port):
    device = parse_device(url)
    assert isinstance(device, SshDevice)
    assert (device.host, device.user, device.port, device.url) == (host, user, port, url)


def test_parse_device_local():
    assert isinstance(parse_device("local"), LocalDevice)
    assert parse_device("local").url == "local"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "tfedge-pi",
        "http://pi",
        "ssh://",
        "ssh://pi:0",
        "ssh://pi:65536",
        "ssh://pi:22x",
        "ssh://pi/home",
        "ssh://-oProxyCommand=touch",
        "ssh://-p@pi",
        "ssh://pi;touch /tmp/x",
        "ssh://pi user",
        "ssh://pi:secret@pi",
        "ssh://[not-ipv6]",
    ],
)
def test_parse_device_rejects_bad_urls(url):
    with pytest.raises(DeviceError) as info:
        parse_device(url)
    error = info.value
    assert error.kind == "bad_url"
    assert repr(url) in error.message and "expected" in error.message
    assert error.hint


def test_parse_device_suggests_the_scheme():
    with pytest.raises(RemoteError) as info:
        parse_device("tfedge-pi")
    assert "ssh://tfedge-pi" in info.value.hint


def test_a_registered_kind_is_parsed_by_its_scheme():
    # A new kind is its module plus one register line: parse_device finds it by the scheme.
    kind = kinds.Kind("here", "here://NAME", "tfedge.devices.protocol", "local_device")
    kinds.register(kind)
    try:
        device = parse_device("here://anything", timeout=7)
        assert isinstance(device, LocalDevice) and device.run_timeout == 7
        with pytest.raises(ValueError, match="twice"):
            kinds.register(kind)
    finally:
        del kinds.KINDS["here"]
    with pytest.raises(RemoteError, match="unknown scheme 'here'"):
        parse_device("here://anything")
    assert all(k.form in kinds.URL_FORMS for k in kinds.KINDS.values())


def test_ssh_argv_is_safe():
    argv = SshDevice("pi", port=2222).ssh_argv("true")
    joined = " ".join(argv)
    assert "BatchMode=yes" in joined and "ConnectTimeout=" in joined
    assert "StrictHostKeyChecking" not in joined
    assert "PasswordAuthentication=no" in joined
    assert argv[-2:] == ["pi", "true"]


# ------------------------------------------------------------------------------------ no device


def test_local_device_matches_the_in_process_runner(digits_tflite, small_npz):
    from tfedge.devices import runner

    model = digits_tflite["int8"]
    rows = bench_on_device("local", [model], small_npz, warmup=1, runs=3)
    assert len(rows) == 1 and not errors_of(rows)
    (kind, direct), *_ = runner.bench_models([str(model)], data=str(small_npz), warmup=0, runs=1)
    assert kind == "result"
    assert rows[0]["model"] == str(model)
    assert rows[0]["device"]["name"] == "local"
    assert rows[0]["outputs_sha256"] == direct["outputs_sha256"]
    assert rows[0]["accuracy"] == direct["accuracy"] > 0.9


def test_unreachable_host_is_an_error_row(tiny_model):
    url = f"ssh://root@127.0.0.1:{closed_port()}"
    rows = bench_on_device(url, [tiny_model], runs=1)
    (row,) = rows
    assert row["error_kind"] == "unreachable"
    assert row["model"] == str(tiny_model) and row["device"] == {"name": url}
    assert "connection refused" in row["error"].lower() and url in row["error"]
    assert "sshd" in row["hint"]


def test_fleet_keeps_the_local_rows_when_a_host_is_dead(tiny_model, small_npz):
    dead = f"ssh://127.0.0.1:{closed_port()}"
    seen = []
    rows = bench_fleet(
        ["local", dead], [tiny_model], small_npz, warmup=0, runs=2, on_result=seen.append
    )
    assert seen == rows
    by_device = {row["device"]["name"]: row for row in rows}
    assert not by_device["local"].get("error") and by_device["local"]["samples"] == 40
    assert by_device[dead]["error_kind"] == "unreachable"


def test_missing_model_file_is_an_input_error(tmp_path):
    from tfedge.core.errors import InputFileError

    with pytest.raises(InputFileError):
        bench_fleet(["local"], [tmp_path / "nope.tflite"])


# ------------------------------------------------------------------------------------ the Pi


@pytest.mark.device
def test_pi_is_aarch64_and_bit_exact_with_the_host(pi, digits_tflite, tiny_model, small_npz):
    cnn = digits_tflite["int8"]
    rows = bench_fleet(
        [PI_URL, "local"], [cnn, tiny_model], small_npz, warmup=0, runs=2, ssh_config=pi.config
    )
    assert not errors_of(rows), errors_of(rows)
    got = {(row["device"]["name"], row["model"]): row for row in rows}
    assert len(got) == 4
    for model in map(str, (cnn, tiny_model)):
        on_pi, on_host = got[(PI_URL, model)], got[("local", model)]
        assert on_pi["device"]["machine"] == "aarch64"
        assert on_pi["device"]["cpu"] == "Cortex-A72"
        assert on_pi["device"]["model"].startswith("Raspberry Pi 4")
        assert on_pi["device"]["emulated"] is True
        assert on_pi["runtime"]["name"] == "ai-edge-litert"
        assert on_host["device"]["machine"] != "aarch64"
        assert on_pi["samples"] == on_host["samples"] == 40
        assert on_pi["sha256"] == on_host["sha256"]
        assert on_pi["accuracy"] == on_host["accuracy"]
        assert on_pi["predictions_sha256"] == on_host["predictions_sha256"]
    assert got[(PI_URL, str(cnn))]["accuracy"] > 0.9
    # Bit-exact outputs on the fixed tiny model. Not asserted for the freshly trained CNN: LiteRT's
    # aarch64 build computes int8 SOFTMAX from a 16-bit lookup table (TFLITE_SOFTMAX_USE_UINT16_LUT)
    # and its x86 build from a float one, so a softmax output can round one step apart (6 of 4,500
    # values on an 8x8-digits MLP; every other tensor of the graph identical). predictions_sha256
    # (top-1 per sample) is immune to that, and the bench table says which kind of agreement held.
    on_pi, on_host = got[(PI_URL, str(tiny_model))], got[("local", str(tiny_model))]
    assert on_pi["outputs_sha256"] == on_host["outputs_sha256"]


def _row(device, outputs, predictions, emulated=False):
    return {
        "model": "/m/model.tflite",
        "sha256": "ab",
        "delegate": None,
        "accuracy": 0.9,
        "size_bytes": 1024,
        "size_gzip_bytes": 512,
        "outputs_sha256": outputs,
        "predictions_sha256": predictions,
        "latency_ms": {"p50": 0.5, "p90": 0.6},
        "device": {"name": device, "emulated": emulated},
    }


@pytest.mark.parametrize(
    "pi_outputs, pi_predictions, verdict",
    [
        ("o1", "p1", "bit-identical"),
        ("o2", "p1", "same top-1 on every sample, raw outputs differ (1)"),
        ("o2", "p2", "DIFFERENT predictions"),
    ],
)
def test_the_table_marks_emulated_latency_and_compares_outputs(pi_outputs, pi_predictions, verdict):
    from tfedge.commands.bench import format_results

    text = format_results(
        [_row("local", "o1", "p1"), _row(PI_URL, pi_outputs, pi_predictions, emulated=True)]
    )
    pi_line = next(line for line in text.splitlines() if line.startswith("model.tflite  ssh"))
    assert "0.500*" in pi_line and "*" not in text.splitlines()[2]
    assert "* emulated device (qemu): not a real device latency" in text
    assert f"model.tflite on {PI_URL} vs local: {verdict}" in text
    assert ("(1) LiteRT's ARM build" in text) == verdict.endswith("(1)")


@pytest.mark.device
def test_second_run_uses_the_device_cache(pi, tiny_model, tmp_path):
    model = unique_copy(tiny_model, tmp_path)
    with pi.device() as device:
        first = list(device.bench([model], warmup=0, runs=1))
        model_name = next(name for name in device.last_uploads if name.endswith(".tflite"))
        second = list(device.bench([model], warmup=0, runs=1))
        assert device.last_uploads == []
    assert not errors_of(first + second)
    assert model_name.startswith(first[0]["sha256"])
    assert first[0]["outputs_sha256"] == second[0]["outputs_sha256"]
    listing = pi.ssh("ls ~/.cache/tfedge").stdout.split()
    assert model_name in listing and not [n for n in listing if n.startswith(".tmp-")]


@pytest.mark.device
def test_file_names_are_never_run_as_shell(pi, tiny_model, small_npz, tmp_path):
    token = uuid.uuid4().hex[:8]
    nasty_dir = tmp_path / "a; touch " / "tmp"
    nasty_dir.mkdir(parents=True)
    first = nasty_dir / f"pwned{token}.tflite"  # its path holds "; touch /tmp/pwned<token>"
    second = tmp_path / f'it\'s "quoted" $(touch pwned{token}) `id` & x.tflite'
    data = tmp_path / f"data with spaces; rm -rf pwned{token}.npz"
    for path in (first, second):
        path.write_bytes(tiny_model.read_bytes())
    data.write_bytes(small_npz.read_bytes())
    assert f"; touch /tmp/pwned{token}" in str(first)

    rows = bench_on_device(PI_URL, [first, second], data, warmup=0, runs=1, ssh_config=pi.config)
    assert not errors_of(rows), errors_of(rows)
    assert [row["model"] for row in rows] == [str(first), str(second)]
    look = (
        f"for f in /tmp/pwned{token}* ~/pwned{token}* ~/.cache/tfedge/pwned{token}*; "
        'do [ -e "$f" ] && echo "FOUND $f"; done; true'
    )
    assert "FOUND" not in pi.ssh(look).stdout
    assert not list(Path("/tmp").glob(f"pwned{token}*"))
    assert not list(Path.cwd().glob(f"pwned{token}*"))


@pytest.mark.device
def test_refused_key_is_an_auth_error(pi, tiny_model, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = pi.write_config(tmp_path / "config", "pi-stranger", IdentityFile=key)
    rows = bench_on_device("ssh://pi-stranger", [tiny_model], runs=1, ssh_config=config)
    (row,) = rows
    assert row["error_kind"] == "auth"
    assert "refused the ssh key" in row["error"] and "Permission denied" in row["error"]
    assert "ssh-copy-id" in row["hint"]


@pytest.mark.device
def test_unknown_host_key_is_refused(pi, tiny_model, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = pi.write_config(
        tmp_path / "config", "pi-new", UserKnownHostsFile=known, StrictHostKeyChecking="ask"
    )
    rows = bench_on_device("ssh://pi-new", [tiny_model], runs=1, ssh_config=config)
    (row,) = rows
    assert row["error_kind"] == "host_key"
    assert "not trusted" in row["error"] and "ssh://pi-new" in row["error"]
    assert "by hand" in row["hint"] and "ssh -F" in row["hint"]
    assert known.read_text() == ""  # nothing was accepted behind the user's back


@pytest.mark.device
def test_changed_host_key_is_refused(pi, tiny_model, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    fake = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    known.write_text(f"[127.0.0.1]:{pi.port} {fake}\n")
    config = pi.write_config(tmp_path / "config", "pi-changed", UserKnownHostsFile=known)
    (row,) = bench_on_device("ssh://pi-changed", [tiny_model], runs=1, ssh_config=config)
    assert row["error_kind"] == "host_key" and "CHANGED" in row["error"]


@pytest.mark.device
def test_missing_interpreter_gives_the_pip_command(pi, tiny_model):
    # /usr/bin/python3 on the device is Debian's python with numpy and no TFLite interpreter
    # (python3 on PATH is the /opt/venv one that has ai-edge-litert).
    rows = bench_on_device(pi.device(python="/usr/bin/python3"), [tiny_model], runs=1)
    (row,) = rows
    assert row["error_kind"] == "no_interpreter"
    assert "no TFLite interpreter" in row["error"]
    assert "/usr/bin/python3 -m pip install ai-edge-litert" in row["hint"]


def _ancestors_below(pid: int, top: int) -> list[int] | None:
    """The ancestors of ``pid`` strictly below ``top``, nearest first; None if ``top`` is not one."""
    chain = []
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == top:
            return chain
        if parent <= 1:
            return None
        chain.append(parent)
        pid = parent


def _kill_session_of(pi, marker: str) -> list[int]:
    """Kill the device-side processes of the ssh session whose runner was given ``marker``.

    The runner on the device is a qemu process of this host, below the device's listening sshd;
    its ancestors up to that sshd are the sshd processes of our own connection. Killing them
    (then the runner) is the device dying mid-run. Only processes below the device's sshd are
    ever touched (the host-side ssh client has the same words in its command line).
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() not in cmdline or b"runner-" not in cmdline:
            continue
        runner = int(entry.name)
        chain = _ancestors_below(runner, pi.sshd_pid)
        if chain is None:
            continue  # not a device process (e.g. the ssh client on the host)
        for victim in [*reversed(chain), runner]:
            os.kill(victim, signal.SIGKILL)
        return [*chain, runner]
    raise AssertionError(f"no runner process with {marker} under the device's sshd")


@pytest.fixture(scope="module")
def slow_model(digits, tmp_path_factory):
    """An int8 model of three wide convolutions: about 170 ms per inference under emulation."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras

    layers = keras.layers
    model = keras.Sequential(
        [
            layers.Input((16, 16, 1)),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10),
        ]
    )
    path = tmp_path_factory.mktemp("remote-slow") / "slow.tflite"
    path.write_bytes(convert(model, mode="int8", calib=digits[0]))
    return path


@pytest.mark.device
def test_device_killed_mid_run_keeps_finished_results(pi, tiny_model, slow_model, tmp_path):
    fast = unique_copy(tiny_model, tmp_path)
    marker = f"{bench_on_device('local', [fast], runs=1)[0]['sha256']}.tflite"
    killed = []

    def on_result(row):
        if not killed and not row.get("error"):
            killed.extend(_kill_session_of(pi, marker))

    start = time.monotonic()
    # 1000 runs: under a second for the fast model, minutes for the slow one; the session dies
    # as soon as the fast model's result arrives. timeout: a guard should the kill miss.
    rows = bench_on_device(
        pi.device(timeout=150), [fast, slow_model], warmup=0, runs=1000, on_result=on_result
    )
    assert killed and time.monotonic() - start < 120
    first, second = rows
    assert not first.get("error") and first["model"] == str(fast)
    assert first["device"]["machine"] == "aarch64"
    assert second["model"] == str(slow_model), second
    assert second["error_kind"] == "connection_lost", second
    assert "lost the connection" in second["error"] and "1 of 2 models finished" in second["error"]
    # the device itself is still up for the next run
    assert pi.ssh("uname -m").stdout.strip() == "aarch64"


@pytest.mark.device
def test_fleet_of_pi_and_dead_host_keeps_the_pi_rows(pi, tiny_model, small_npz):
    dead = f"ssh://root@127.0.0.1:{closed_port()}"
    arrived = []
    rows = bench_fleet(
        [PI_URL, dead],
        [tiny_model],
        small_npz,
        warmup=0,
        runs=1,
        ssh_config=pi.config,
        on_result=lambda row: arrived.append(row["device"]["name"]),
    )
    assert sorted(arrived) == sorted([PI_URL, dead])
    assert arrived[0] == dead  # a dead host fails fast; the Pi's row comes later
    by_device = {row["device"]["name"]: row for row in rows}
    assert by_device[PI_URL]["device"]["machine"] == "aarch64"
    assert by_device[PI_URL]["accuracy"] is not None
    assert by_device[dead]["error_kind"] == "unreachable"


@pytest.mark.device
def test_a_second_checkout_is_told_whose_device_holds_the_port(pi, tmp_path):
    env = {
        **os.environ,
        "TFEDGE_DEVICE_DIR": str(tmp_path / "device"),
        "TFEDGE_PI_PORT": str(pi.port),
    }
    script = ["bash", "scripts/pi-device.sh"]
    up = subprocess.run([*script, "up"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert up.returncode == 1
    errors = [line for line in up.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "another checkout" in errors[0], up.stderr
    assert str(pi.config.parent) in errors[0]
    assert "TFEDGE_PI_PORT=" in up.stderr
    down = subprocess.run([*script, "down"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert down.returncode == 0 and "left running" in down.stderr
    os.kill(pi.sshd_pid, 0)  # the first checkout's sshd still runs
    status = subprocess.run([*script, "status"], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
