"""Shared fixtures: the bundled digits, a trained reference CNN and its real conversions."""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def digits():
    """``(train, test)`` :class:`tfedge.core.data.Dataset` of the bundled digits at 16x16x1."""
    from tfedge.core.digits import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A session-wide folder for models and data files the tests share."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def trained_digits_cnn(digits):
    """The digits reference CNN (tf_keras), trained 10 epochs (about 98 % test accuracy)."""
    from tfedge.models.zoo import build, train

    train_data, _ = digits
    return train(build("digits_cnn"), train_data, epochs=10)


@pytest.fixture(scope="session")
def digits_cnn_path(trained_digits_cnn, artifacts):
    """The trained digits CNN saved as a Keras 2 ``.keras`` file."""
    path = artifacts / "digits_cnn.keras"
    trained_digits_cnn.save(path)
    return path


@pytest.fixture(scope="session")
def test_npz(digits, artifacts):
    """The 397 test digits as an ``.npz`` with ``x`` and ``y``."""
    return digits[1].save(artifacts / "digits_test.npz")


@pytest.fixture(scope="session")
def train_npz(digits, artifacts):
    """The 1400 training digits as an ``.npz`` with ``x`` and ``y``."""
    return digits[0].save(artifacts / "digits_train.npz")


@pytest.fixture(scope="session")
def digits_tflite(trained_digits_cnn, digits, artifacts):
    """The trained digits CNN converted by tfedge: ``{"int8": path, "float32": path}``."""
    from tfedge.converters import convert

    paths = {}
    for mode in ("int8", "float32"):
        path = artifacts / f"digits_{mode}.tflite"
        path.write_bytes(convert(trained_digits_cnn, mode=mode, calib=digits[0]))
        paths[mode] = path
    return paths


@pytest.fixture(scope="session")
def binary_digits(digits, artifacts):
    """A one-output binary classifier (is the digit >= 5?) as int8 ``.tflite``, and its test data.

    Returns ``{"tflite": path, "test_npz": path}``; the labels are 0 and 1.
    """
    from tfedge.converters import convert
    from tfedge.core.backend import keras
    from tfedge.core.data import Dataset

    train, test = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Input(train.x.shape[1:]),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="binary_digits",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(train.x, (train.y >= 5).astype("float32"), epochs=4, verbose=0)
    path = artifacts / "binary_digits_int8.tflite"
    path.write_bytes(convert(model, mode="int8", calib=train))
    test_npz = Dataset(test.x, (test.y >= 5).astype("int64")).save(artifacts / "binary_test.npz")
    return {"tflite": path, "test_npz": test_npz}


def keras_accuracy(model, data) -> float:
    """Top-1 accuracy of a Keras model on a Dataset."""
    predictions = np.asarray(model.predict(data.x, verbose=0))
    return float((predictions.argmax(axis=-1) == data.y).mean())


@pytest.fixture(scope="session")
def accuracy_of():
    """The ``keras_accuracy(model, data)`` helper as a fixture."""
    return keras_accuracy


def litert_accuracy(blob: bytes, data, tmp_path, name: str = "model.tflite") -> float:
    """Top-1 accuracy of a .tflite model with the real LiteRT interpreter (tfedge's runner).

    ``data`` is a :class:`tfedge.core.data.Dataset` or an ``(x, y)`` pair.
    """
    from tfedge.devices.runner import bench_models

    path = tmp_path / name
    path.write_bytes(blob)
    x, y = (data.x, data.y) if hasattr(data, "x") else data
    ((kind, row),) = list(bench_models([str(path)], data=(x, y), warmup=0, runs=1))
    assert kind == "result", row
    return row["accuracy"]


def litert_outputs(blob: bytes, x: np.ndarray) -> np.ndarray:
    """The raw int8 output of an int8 .tflite model for each sample of ``x`` (as int32)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    rows = []
    for sample in x:
        q = np.clip(np.round(sample / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], q[np.newaxis])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].astype(np.int32))
    return np.stack(rows)


@pytest.fixture(scope="session")
def raw_outputs():
    """The ``litert_outputs(blob, x)`` helper as a fixture."""
    return litert_outputs


@pytest.fixture(scope="session")
def tflite_accuracy():
    """The ``litert_accuracy(blob, data, tmp_path)`` helper as a fixture."""
    return litert_accuracy


class Browser:
    """Debian's headless ``chromium``, with every request it makes sent to a local counting proxy.

    Attributes:
        binary: the chromium executable.
    """

    def __init__(self, binary: str, workdir):
        self.binary = binary
        self.workdir = workdir

    def open(self, page, *, width: int = 1400, height: int = 2400) -> dict:
        """Load ``page`` twice (DOM dump, then a screenshot) with all traffic routed to a proxy.

        Returns:
            ``{"dom": str, "screenshot": Path, "requests": [first bytes of each connection]}``.
        """
        import socket
        import subprocess
        import threading

        page = Path(page).resolve()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        requests: list[bytes] = []
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(2)
                    try:
                        requests.append(conn.recv(512))
                        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    except OSError:
                        requests.append(b"")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        profile = Path(self.workdir) / f"profile-{page.stem}-{port}"
        shot = Path(self.workdir) / f"{page.stem}-{port}.png"
        common = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-features=NetworkTimeServiceQuerying,Translate,OptimizationHints,"
            "MediaRouter,AutofillServerCommunication",
            # The browser's own services (component updates, Google sign-in) still call home in
            # headless mode: point them at a closed local port so that every connection the
            # proxy sees comes from the page.
            "--component-updater=url-source=http://127.0.0.1:9/",
            "--gaia-url=http://127.0.0.1:9/",
            f"--proxy-server=http://127.0.0.1:{port}",
            "--proxy-bypass-list=<-loopback>",
            "--virtual-time-budget=3000",
            f"--window-size={width},{height}",
        ]
        try:
            dom = subprocess.run(
                [*common, "--dump-dom", page.as_uri()],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            subprocess.run(
                [*common, f"--screenshot={shot}", page.as_uri()],
                capture_output=True,
                timeout=120,
                check=True,
            )
        finally:
            stop.set()
            thread.join(timeout=5)
            listener.close()
        return {"dom": dom, "screenshot": shot, "requests": requests}

    def check_report(self, path, figures, table_rows: int, height: int = 4000) -> dict:
        """Open a tfedge HTML report and assert it is self-contained, loads nothing, and shows
        the results table (``table_rows`` rows) and every figure in ``figures`` (element ids).

        Returns:
            The :meth:`open` result (``dom``, ``screenshot``, ``requests``).
        """
        import re

        from PIL import Image

        from tfedge.reports.plots import BAR_COLOR, FRONT_COLOR, MEDIAN_COLOR

        text = Path(path).read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), "a URL in the page"
        for tag in ("<script", "<link", "<img", "<iframe", "@import", "@font-face", "url(http"):
            assert tag not in text.lower(), tag
        page = self.open(path, height=height)
        assert page["requests"] == [], page["requests"]
        dom = page["dom"]
        results = re.search(r'<table id="results">.*?</table>', dom, re.S)
        assert results, "no results table in the rendered DOM"
        assert results.group(0).count("<tr") == table_rows + 1  # and the header row
        for figure in figures:
            match = re.search(
                rf'<figure id="{figure}" class="plot"[^>]*>\s*<svg(.*?)</svg>', dom, re.S
            )
            assert match, f"{figure} is not in the rendered page"
            assert match.group(1).count("<path") > 5 and "<text" in match.group(1), figure
        image = np.asarray(Image.open(page["screenshot"]).convert("RGB")).astype(int)
        assert image.shape[:2] == (height, 1400), image.shape
        drawn = (image.min(axis=-1) < 250).any(axis=1).nonzero()[0]
        assert drawn.size and drawn.max() < height - 20, "the page is longer than the screenshot"
        ink = (image[: drawn.max()].min(axis=-1) < 200).mean()
        assert ink > 0.02, f"the screenshot is nearly blank ({ink:.3%} drawn)"
        colours = {
            "plot-accuracy-size": FRONT_COLOR,
            "plot-accuracy-latency": FRONT_COLOR,
            "plot-latency": MEDIAN_COLOR,
            "plot-layers-1": BAR_COLOR,
        }
        for figure in figures:
            colour = colours.get(figure)
            if colour:
                rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
                close = (np.abs(image - rgb).max(axis=-1) <= 6).sum()
                assert close > 30, f"no {colour} in the screenshot: {figure} is not drawn"
        return page


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A real headless browser (Debian's ``chromium``), installed with apt-get when missing.

    Skips (with the reason) only when chromium is absent and cannot be installed.
    """
    import shutil
    import subprocess

    binary = shutil.which("chromium")
    if binary is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=600"]
        log = []
        for command in (
            ["apt-get", *lock, "update"],
            ["apt-get", *lock, "install", "-y", "--no-install-recommends", "chromium"],
        ):
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, env=env, timeout=1200
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"chromium is not installed and `{' '.join(command)}` failed: {exc}")
            log.append(done.stdout[-400:] + done.stderr[-400:])
            if done.returncode != 0:
                pytest.skip(
                    f"chromium is not installed and `{' '.join(command)}` failed "
                    f"(exit {done.returncode}): {log[-1].strip()[-300:]}"
                )
        binary = shutil.which("chromium")
        if binary is None:
            pytest.skip("apt-get installed chromium but no `chromium` is on PATH")
    return Browser(binary, tmp_path_factory.mktemp("browser"))


def pytest_collection_modifyitems(session, config, items):
    """Run the emulated-Pi tests last, and start the Pi's (cached, minutes-long) build right away.

    The ``pi`` fixture's own ``pi-device.sh up`` waits on the script's lock for this background
    build, so the other tests run while debootstrap works.
    """
    device = [item for item in items if item.get_closest_marker("device")]
    if not device:
        return
    items[:] = [item for item in items if not item.get_closest_marker("device")] + device
    if os.environ.get("TFEDGE_SKIP_DEVICE") == "1" or os.geteuid() != 0:
        return
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    status = ["bash", "scripts/pi-device.sh", "status"]
    # A device that was up before this session is left up; one this session starts is taken down.
    config._tfedge_device_was_up = (
        subprocess.run(status, cwd=root, capture_output=True).returncode == 0
    )
    log = open(root / ".pytest-device-up.log", "w")  # noqa: SIM115 (kept open for the child)
    config._tfedge_device_up = subprocess.Popen(
        ["bash", "scripts/pi-device.sh", "up"], cwd=root, stdout=log, stderr=subprocess.STDOUT
    )


def pytest_unconfigure(config):
    proc = getattr(config, "_tfedge_device_up", None)
    if proc is None:
        return
    if proc.poll() is None:
        proc.wait(timeout=1800)
    if not config._tfedge_device_was_up:
        import subprocess
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        subprocess.run(
            ["bash", "scripts/pi-device.sh", "down"], cwd=root, capture_output=True, timeout=120
        )


def _postgres_bindir():
    """Debian's PostgreSQL server programs (``initdb``, ``pg_ctl``), newest version first."""
    import glob
    from pathlib import Path

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 (a free port), from Debian's ``postgresql`` package.

    Installed with apt-get when missing (needs root); the cluster is initialised and run as the
    ``postgres`` user (``runuser``) when we are root, and stopped and deleted at session end.
    """
    import shutil
    import socket
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    bindir = _postgres_bindir()
    if bindir is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("PostgreSQL's server is not installed and installing it needs root apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
        )
        bindir = _postgres_bindir()
        assert bindir is not None, "apt-get installed postgresql but no initdb was found"
    root = Path(tempfile.mkdtemp(prefix="tfedge-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [*as_user, bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run(
        [
            *as_user,
            bindir / "pg_ctl",
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # pg_ctl -w waited for the socket; make sure TCP answers
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
