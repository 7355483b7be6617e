#!/usr/bin/env python3
"""tfedge's device-side runner: benchmark ``.tflite`` models with whatever interpreter is installed.

This one file is copied to a device and run there with plain ``python3``: it needs only the standard
library, numpy and one TFLite interpreter (``ai_edge_litert``, else ``tflite_runtime``, else
``tensorflow.lite``). It never imports tfedge. On the host, ``tfedge bench`` uses the same code.

Protocol (``python3 runner.py --model A.tflite [--model B.tflite] [--data D.npz] ...``): one JSON
object per line on stdout, as work finishes::

    {"type": "result", "result": {...}}               # one per model, the bench JSON schema
    {"type": "error", "model": "A.tflite", "message": "...", "hint": "..."}

A fatal error (no interpreter, unreadable data) is an error line with ``"model": null`` and exit 1.

Example:
    >>> rows = list(bench_models(["model.tflite"], data="digits.npz", runs=50))  # doctest: +SKIP
    >>> rows[0]["latency_ms"]["p50"]  # doctest: +SKIP
"""

import argparse
import collections
import gzip
import hashlib
import json
import os
import platform
import sys
import time
import zipfile

try:
    import numpy as np
except ImportError:  # main() says so in one error line
    np = None

__all__ = [
    "RunnerError",
    "NpzArray",
    "find_runtime",
    "device_info",
    "load_data",
    "bench_models",
    "main",
]

DEFAULT_WARMUP = 20
DEFAULT_RUNS = 200
EDGETPU_LIBRARY = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}
#: ARM core names by the part number in /proc/cpuinfo.
ARM_PARTS = dict(
    pair.split("=")
    for pair in (
        "0xd03=Cortex-A53 0xd04=Cortex-A35 0xd05=Cortex-A55 0xd07=Cortex-A57 0xd08=Cortex-A72 "
        "0xd09=Cortex-A73 0xd0a=Cortex-A75 0xd0b=Cortex-A76 0xd0c=Neoverse-N1 "
        "0xd40=Neoverse-V1 0xd41=Cortex-A78 0xd4f=Neoverse-V2 0xd46=Cortex-A510 "
        "0xd47=Cortex-A710 0xd80=Cortex-A520 0xd81=Cortex-A720 0xd87=Cortex-A725"
    ).split()
)


class RunnerError(Exception):
    """A failure to report as one clean error line (``message`` plus an optional ``hint``)."""

    def __init__(self, message, hint=None, code="runner"):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


#: The interpreter found on this machine: its name, version, Interpreter class and delegate loader.
Runtime = collections.namedtuple("Runtime", "name version interpreter load_delegate")


def _runtime_info(runtime):
    return {"name": runtime.name, "version": runtime.version}


def _distribution_version(name, module):
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return getattr(module, "__version__", "unknown")


def install_hint():
    """The pip command that installs an interpreter for this Python and CPU architecture."""
    machine = platform.machine().lower()
    py = "%d.%d" % sys.version_info[:2]
    exe = sys.executable or "python3"
    if machine in ("armv7l", "armv6l") or sys.version_info < (3, 9):
        return '%s -m pip install tflite-runtime "numpy<2"   (Python %s on %s)' % (exe, py, machine)
    return "%s -m pip install ai-edge-litert   (Python %s on %s)" % (exe, py, machine)


def _load_runtime(package):
    """The :class:`Runtime` of one interpreter package; raises when it does not import."""
    if package == "tensorflow":
        import warnings

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as tf

        delegate = tf.lite.experimental.load_delegate
        return Runtime("tensorflow", tf.__version__, tf.lite.Interpreter, delegate)
    if package == "ai_edge_litert":
        from ai_edge_litert import interpreter as module
    else:
        from tflite_runtime import interpreter as module
    name = package.replace("_", "-")
    version = _distribution_version(name, module)
    return Runtime(name, version, module.Interpreter, module.load_delegate)


def find_runtime():
    """Return the first interpreter that loads: ai_edge_litert, tflite_runtime, tensorflow.lite.

    Raises:
        RunnerError: when none is installed, with the pip command for this device.
    """
    tried = []
    for package in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        try:
            return _load_runtime(package)
        except Exception as exc:  # ImportError, or a broken wheel (numpy ABI)
            tried.append("%s (%s)" % (package, _short(exc)))
    raise RunnerError(
        "no TFLite interpreter on this device (tried %s)" % "; ".join(tried),
        "install one: " + install_hint(),
        "no_interpreter",
    )


def _short(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:120]


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _cpuinfo():
    """``/proc/cpuinfo``: the first value of each field, and the ARM part numbers listed."""
    fields, parts = {}, set()
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "CPU part":
            parts.add(value.lower())
        fields.setdefault(key, value)
    return fields, parts


def cpu_name():
    """A readable CPU name: the x86 model name, or the ARM core from its part number."""
    fields, parts = _cpuinfo()
    if fields.get("model name"):
        return fields["model name"]
    if parts:
        names = sorted(ARM_PARTS.get(part, "ARM part " + part) for part in parts)
        return " + ".join(names)
    return platform.processor() or platform.machine()


def board_model():
    """The board name (e.g. ``Raspberry Pi 4 Model B``) where the device tree or cpuinfo gives one."""
    return _read("/proc/device-tree/model").strip("\x00\n ") or _cpuinfo()[0].get("Model")


def device_info(name="local"):
    """Describe this machine: name, machine, cpu, board model, cores, python, OS.

    Example:
        >>> device_info()["machine"] in ("x86_64", "aarch64", "armv7l", "arm64", "AMD64")
        True
    """
    return {
        "name": name,
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "model": board_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.system(),
        "release": platform.release(),
    }


class NpzArray:
    """An uncompressed ``.npz`` member read slice by slice from the file (never held whole).

    Only what the runner needs: ``shape``, ``dtype``, ``len()`` and ``[start:stop]``. Plain file
    reads, not a memory map, so the pages read do not stay in the process's resident memory.
    """

    def __init__(self, path, offset, dtype, shape):
        self.path, self.offset, self.dtype, self.shape = path, offset, np.dtype(dtype), tuple(shape)
        self.row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice):
            return self[key : key + 1][0]
        start, stop, _ = key.indices(len(self))
        count = max(0, stop - start)
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.row)
            data = handle.read(count * self.row)
        return np.frombuffer(data, self.dtype).reshape((count,) + self.shape[1:])

    def __iter__(self):
        for start in range(0, len(self), 256):
            yield from self[start : start + 256]

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)


def _stored_member(path, name):
    """An :class:`NpzArray` for an uncompressed C-order member of an ``.npz``, else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(name + ".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            with archive.open(info) as member:
                major, _ = np.lib.format.read_magic(member)
                read = getattr(np.lib.format, "read_array_header_%d_0" % min(major, 2))
                shape, fortran, dtype = read(member)
                header = member.tell()
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
        if fortran or dtype.hasobject or not shape:
            return None
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
        start += int.from_bytes(local[28:30], "little") + header
        return NpzArray(path, start, dtype, shape)
    except Exception:
        return None


def load_data(path):
    """Read ``x`` (and ``y`` when present) from an ``.npz`` file.

    An uncompressed ``x`` of more than 64 MB is read slice by slice (:class:`NpzArray`).

    Raises:
        RunnerError: when the file is unreadable or has no ``x`` array.
    """
    large = _stored_member(path, "x")
    if large is not None and len(large) * large.row <= 64 * 2**20:
        large = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "x" not in names:
                raise RunnerError(
                    "data file %s has arrays %s; expected 'x' (inputs) and optional 'y' (labels)"
                    % (path, names),
                    "save it with numpy.savez(path, x=inputs, y=labels)",
                )
            x = np.asarray(npz["x"]) if large is None else large
            y = np.asarray(npz["y"]) if "y" in names else None
    except RunnerError:
        raise
    except Exception as exc:
        raise RunnerError(
            "cannot read data file %s: %s" % (path, _short(exc)),
            "pass an .npz file written by numpy.savez with arrays x and y",
        ) from exc
    if y is not None and len(y) != len(x):
        raise RunnerError(
            "data file %s has %d inputs but %d labels" % (path, len(x), len(y)),
            "x and y must have the same first dimension",
        )
    return x, y


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gzip_size(path):
    with open(path, "rb") as handle:
        return len(gzip.compress(handle.read(), compresslevel=9, mtime=0))


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss_mb():
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024.0, 2)
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 2)
    except Exception:
        return None


def _tensor_info(details):
    """Name, dtype, shape and quantization of the tensors (one dict for a single one)."""
    infos = [
        {
            "name": detail.get("name"),
            "dtype": np.dtype(detail["dtype"]).name,
            "shape": [int(d) for d in detail["shape"]],
            "scale": float(detail.get("quantization", (0.0, 0))[0]),
            "zero_point": int(detail.get("quantization", (0.0, 0))[1]),
        }
        for detail in details
    ]
    return infos[0] if len(infos) == 1 else infos


class _Feeder:
    """Turns float samples into the model's input tensor (quantized with its own scale/zero point)."""

    def __init__(self, detail):
        self.detail = detail
        self.dtype = np.dtype(detail["dtype"])
        self.shape = tuple(int(d) for d in detail["shape"])
        self.batch = self.shape[0] if self.shape else 1
        self.sample_shape = self.shape[1:]
        self.scale, self.zero_point = detail.get("quantization", (0.0, 0))

    def check(self, x):
        sample = tuple(x.shape[1:])
        if sample == self.sample_shape:
            return
        if int(np.prod(sample)) != int(np.prod(self.sample_shape)):
            raise RunnerError(
                "data samples have shape %s but the model input '%s' is %s"
                % (list(sample), self.detail.get("name"), list(self.shape)),
                "give data whose x has shape [N, %s]"
                % ", ".join(str(d) for d in self.sample_shape),
            )

    def __call__(self, x):
        """Quantize a [b, ...] float batch into the input tensor, padding to the model's batch."""
        count = x.shape[0]
        x = np.asarray(x).reshape((count,) + self.sample_shape)
        if count < self.batch:
            pad = np.zeros((self.batch - count,) + self.sample_shape, dtype=x.dtype)
            x = np.concatenate([x, pad])
        if self.dtype.kind in "iu":
            if self.scale:
                x = np.round(x.astype(np.float64) / self.scale) + self.zero_point
            info = np.iinfo(self.dtype)
            x = np.clip(x, info.min, info.max)
        return np.ascontiguousarray(x.astype(self.dtype))

    def random(self, seed=0):
        """A deterministic random input of the right dtype (used when no data is given)."""
        rng = np.random.default_rng(seed)
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            low, high = max(info.min, -128), min(info.max, 127)
            return rng.integers(low, high + 1, size=self.shape).astype(self.dtype)
        if self.dtype.kind == "b":
            return rng.integers(0, 2, size=self.shape).astype(self.dtype)
        return rng.uniform(-1.0, 1.0, size=self.shape).astype(self.dtype)


def _scores(output, detail, count):
    """The first output of ``count`` samples as float64 rows (dequantized with its scale)."""
    values = np.asarray(output)[:count].reshape(count, -1).astype(np.float64)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale:
        values = (values - zero_point) * scale
    return values


def _is_probability(interpreter, detail, scores):
    """Whether a one-unit output is a probability (threshold 0.5) or a logit (threshold 0).

    Decided by the output's quantized range (an int8 LOGISTIC output spans [0, 1)), else by the
    operator that produces it, else by the values seen.
    """
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale and np.dtype(detail["dtype"]).kind in "iu":
        info = np.iinfo(detail["dtype"])
        return (info.min - zero_point) * scale >= -1e-6 and (
            info.max - zero_point
        ) * scale <= 1 + 1e-6
    try:
        for op in interpreter._get_ops_details():
            if detail["index"] in list(op["outputs"]):
                return op["op_name"] == "LOGISTIC"
    except Exception:
        pass
    return bool(((scores >= 0) & (scores <= 1)).all())


def _stateful(interpreter):
    """Whether the model keeps state between invocations: it has a resource (variable) tensor."""
    try:
        return any(np.dtype(d["dtype"]).kind == "O" for d in interpreter.get_tensor_details())
    except Exception:
        return False


def _labels(y):
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] > 1:
        return y.reshape(len(y), -1).argmax(axis=1)
    return y.reshape(len(y)).astype(np.int64)


def _stats(times_ms):
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        return None
    stats = {"mean": t.mean(), "std": t.std(), "min": t.min()}
    stats.update({"p%d" % q: np.percentile(t, q) for q in (50, 90, 99)})
    stats["max"] = t.max()
    return {key: round(float(value), 4) for key, value in stats.items()}


def bench_one(
    runtime,
    path,
    name=None,
    data=None,
    threads=1,
    warmup=DEFAULT_WARMUP,
    runs=DEFAULT_RUNS,
    delegate=None,
    device=None,
    keep_top1=False,
):
    """Measure one model: size, accuracy over ``data``, latency, first inference, init time, peak RSS.

    Args:
        runtime: the :class:`Runtime` from :func:`find_runtime`.
        path: the ``.tflite`` file.
        name: the name to report as ``model`` (defaults to ``path``).
        data: ``(x, y)`` arrays (``y`` may be None), or None for a seeded random input.
        threads: interpreter threads.
        warmup: untimed invocations before the timed ones.
        runs: timed invocations.
        delegate: ``"edgetpu"`` to run on a Coral EdgeTPU, or None for the CPU.
        device: the device dict to report (defaults to :func:`device_info`).
        keep_top1: also return each sample's predicted class as ``top1`` (a list).

    Returns:
        The result dict of the bench JSON schema (see ``tfedge bench --json``).
    """
    if not os.path.isfile(path):
        raise RunnerError("model file not found: %s" % path, "check the path")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise RunnerError(
            "%s is not a TFLite model (no TFL3 identifier)" % path,
            "pass a .tflite file written by tfedge convert or the TFLite converter",
        )
    result = {
        "model": name or path,
        "sha256": _sha256_file(path),
        "size_bytes": os.path.getsize(path),
        "size_gzip_bytes": _gzip_size(path),
    }
    _reset_peak_rss()
    delegates = None
    if delegate:
        if delegate != "edgetpu":
            raise RunnerError("unknown delegate %r" % delegate, "use --delegate edgetpu")
        library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
        try:
            delegates = [runtime.load_delegate(library)]
        except Exception as exc:
            raise RunnerError(
                "cannot load the EdgeTPU delegate %s: %s" % (library, _short(exc)),
                "install libedgetpu1-std from Coral's package repository and plug in the "
                "Coral device (https://coral.ai/docs/accelerator/get-started/)",
            ) from exc

    def load():
        loaded = runtime.interpreter(
            model_path=path, num_threads=threads, experimental_delegates=delegates
        )
        loaded.allocate_tensors()
        return loaded

    start = time.perf_counter()
    try:
        interpreter = load()
        init_ms = (time.perf_counter() - start) * 1000.0
        # inside the try: a damaged tensor name fails here (UnicodeDecodeError)
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
    except Exception as exc:
        custom = "custom op" in str(exc)
        raise RunnerError(
            "the interpreter cannot load %s: %s" % (path, _short(exc)),
            "the model uses custom operators this runtime has no kernel for; run it where they "
            "are registered (e.g. MediaPipe)"
            if custom
            else "the file may be truncated or use operators this runtime lacks",
        ) from exc
    # LiteRT's reset_all_variables() leaves resource variables as they are: a stateful model
    # gets a fresh interpreter before every batch, so each sample starts from the initial state.
    stateful = _stateful(interpreter)
    feeders = [_Feeder(detail) for detail in inputs]

    def set_inputs(batch_list):
        for feeder, batch in zip(feeders, batch_list):
            interpreter.set_tensor(feeder.detail["index"], batch)

    def digest_outputs(count=None):
        for detail in outputs:
            digest.update(np.ascontiguousarray(interpreter.get_tensor(detail["index"])[:count]))

    accuracy = None
    samples = 0
    digest = hashlib.sha256()
    top1 = hashlib.sha256()
    if data is not None:
        x, y = data
        if len(feeders) != 1:
            raise RunnerError(
                "the model has %d inputs; data files feed single-input models" % len(feeders),
                "bench it without --data (random inputs) or export a single-input model",
            )
        feeder = feeders[0]
        feeder.check(x)
        batch = max(feeder.batch, 1)
        samples = int(len(x))
        timing_inputs = [feeder(x[:batch])]
    else:
        timing_inputs = [feeder.random(seed) for seed, feeder in enumerate(feeders)]
    set_inputs(timing_inputs)
    start = time.perf_counter()
    interpreter.invoke()
    first_ms = (time.perf_counter() - start) * 1000.0
    if data is None:
        digest_outputs()
    else:
        correct = 0
        binary = []
        kept = []
        labels = _labels(y) if y is not None else None
        for offset in range(0, samples, batch):
            count = min(batch, samples - offset)
            if offset and stateful:
                interpreter = load()
            if offset:
                set_inputs([feeder(x[offset : offset + count])])
                interpreter.invoke()
            digest_outputs(count)
            values = _scores(interpreter.get_tensor(outputs[0]["index"]), outputs[0], count)
            if values.shape[1] == 1:
                binary.append(values[:, 0])  # thresholded below, once the whole output is seen
                continue
            predicted = values.argmax(axis=1)
            kept.append(predicted)
            top1.update(np.asarray(predicted, dtype="<i4").tobytes())
            if labels is not None:
                correct += int((predicted == labels[offset : offset + count]).sum())
        if binary:
            values = np.concatenate(binary)
            threshold = 0.5 if _is_probability(interpreter, outputs[0], values) else 0.0
            predicted = (values > threshold).astype(np.int64)
            kept[:] = [predicted]
            top1.update(np.asarray(predicted, dtype="<i4").tobytes())
            if labels is not None:
                correct = int((predicted == labels).sum())
        if labels is not None and samples:
            accuracy = round(correct / samples, 6)
        if keep_top1:
            result["top1"] = [int(v) for v in np.concatenate(kept)] if kept else []

    set_inputs(timing_inputs)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    clock = time.perf_counter
    for _ in range(runs):
        start = clock()
        interpreter.invoke()
        times.append((clock() - start) * 1000.0)

    result.update(
        {
            "accuracy": accuracy,
            "samples": samples,
            "outputs_sha256": digest.hexdigest(),
            # Top-1 per sample: equal across devices even where a float-based kernel (the int8
            # SOFTMAX lookup table) rounds one output step differently on x86 and ARM.
            "predictions_sha256": top1.hexdigest() if samples else None,
            "latency_ms": _stats(times),
            "latencies_ms": [round(t, 4) for t in times],  # every timed run, in order
            "first_inference_ms": round(first_ms, 4),
            "init_ms": round(init_ms, 4),
            "peak_rss_mb": _peak_rss_mb(),
            "stateful": stateful,
            "threads": threads,
            "warmup": warmup,
            "runs": runs,
            "delegate": delegate,
            "runtime": _runtime_info(runtime),
            "device": device or device_info(),
            "input": _tensor_info(inputs),
            "output": _tensor_info(outputs),
        }
    )
    return result


def bench_models(
    paths,
    names=None,
    data=None,
    threads=1,
    warmup=DEFAULT_WARMUP,
    runs=DEFAULT_RUNS,
    delegate=None,
    device_name="local",
    keep_top1=False,
):
    """Bench several models in one process, one after another, with the same settings and data.

    Args:
        paths: the ``.tflite`` files.
        names: names to report (default: the paths).
        data: an ``.npz`` path, ``(x, y)`` arrays, or None.
        threads: interpreter threads.
        warmup: untimed invocations per model.
        runs: timed invocations per model.
        delegate: ``"edgetpu"`` or None.
        device_name: the name reported in ``device.name``.
        keep_top1: add each sample's predicted class to every result (``top1``).

    Yields:
        ``("result", dict)`` or ``("error", {"model", "message", "hint"})`` per model, as each finishes.

    Raises:
        RunnerError: for fatal problems (no interpreter, unreadable data).
    """
    runtime = find_runtime()
    if isinstance(data, (str, os.PathLike)):
        data = load_data(data)
    device = device_info(device_name)
    names = list(names or paths)
    for path, name in zip(paths, names):
        try:
            yield (
                "result",
                bench_one(
                    runtime, path, name, data, threads, warmup, runs, delegate, device, keep_top1
                ),
            )
        except RunnerError as exc:
            yield (
                "error",
                {"model": name, "message": exc.message, "hint": exc.hint, "code": exc.code},
            )
        except Exception as exc:  # the interpreter on a damaged model: this model's row only
            message = "the interpreter failed on %s: %s: %s" % (
                path,
                type(exc).__name__,
                _short(exc),
            )
            hint = "the file may be truncated or corrupt; convert or copy it again"
            yield "error", {"model": name, "message": message, "hint": hint, "code": "interpreter"}


def _emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


def _fatal(message, hint=None, code=None):
    """Print the error line of a failure that ends the run (``"model": null``); return 1."""
    line = {"type": "error", "model": None, "message": message, "hint": hint}
    _emit(line if code is None else dict(line, code=code))
    return 1


def main(argv=None):
    """Command-line entry: print JSON lines for each model; exit 1 on a fatal error."""
    parser = argparse.ArgumentParser(description="tfedge device runner")
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--name", action="append")
    parser.add_argument("--data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--delegate")
    parser.add_argument("--device-name", default="local")
    parser.add_argument("--info", action="store_true", help="print the device description and exit")
    args = parser.parse_args(argv)
    if args.name and len(args.name) != len(args.model):
        parser.error("give one --name per --model")
    if not args.model and not args.info:
        parser.error("give at least one --model (or --info)")
    if np is None:
        return _fatal(
            "numpy is not installed on this device",
            "install it: %s -m pip install numpy" % (sys.executable or "python3"),
        )
    try:
        if args.info:
            runtime = _runtime_info(find_runtime())
            _emit({"type": "info", "device": device_info(args.device_name), "runtime": runtime})
            return 0
        options = (args.threads, args.warmup, args.runs, args.delegate, args.device_name)
        for kind, payload in bench_models(args.model, args.name, args.data, *options):
            _emit({"type": kind, **({"result": payload} if kind == "result" else payload)})
    except RunnerError as exc:
        return _fatal(exc.message, exc.hint, exc.code)
    except KeyboardInterrupt:
        return _fatal("interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
