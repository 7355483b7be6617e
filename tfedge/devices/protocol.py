"""A device that runs tfedge's one-file runner: the :class:`Device` protocol and ``local``.

A device runs the runner (:mod:`tfedge.devices.runner`) with ``python3`` and streams one JSON line per
model back. The local device runs the same file in a subprocess of its own (so a crash or a
hung model never takes the caller down), and :class:`tfedge.devices.ssh.SshDevice` runs it over ssh:
local and ssh devices share one code path and give rows of the same schema (the bench JSON
schema), with ``model`` set to the host-side name and ``device.name`` set to the URL given.

This module imports no TensorFlow (stdlib only).

Example:
    >>> with LocalDevice() as device:  # doctest: +SKIP
    ...     rows = list(device.bench(["model.tflite"], data="digits.npz", runs=50))
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from tfedge.core.errors import DeviceError, InputFileError
from tfedge.devices.runner import DEFAULT_RUNS, DEFAULT_WARMUP

__all__ = ["Device", "LocalDevice", "RemoteError", "RUNNER_PATH", "local_device"]

RUNNER_PATH = Path(__file__).with_name("runner.py")

Row = dict


class RemoteError(DeviceError):
    """A device failure of a known kind; ``kind`` lets callers and tests tell them apart.

    Kinds: ``bad_url`` and ``bad_config`` (raised before anything runs); ``unreachable``
    (refused, timed out, unknown name, no route); ``host_key`` (not trusted, or changed);
    ``auth`` (key refused); ``no_interpreter`` (the device's python3 has no TFLite
    interpreter); ``connection_lost`` (the device died or the connection dropped mid-run);
    ``timeout`` (the run took longer than allowed); ``runner`` (the runner failed in another
    way); ``ssh`` (any other ssh failure); ``internal`` (a bug: an unexpected exception).
    """

    def __init__(self, message: str, hint: str | None = None, kind: str = "ssh"):
        super().__init__(message, hint)
        self.kind = kind


# ------------------------------------------------------------------------------------ parsing


class Device:
    """A machine that runs the runner: subclasses say how to start it and read its stream.

    Attributes:
        url: the URL the device was named by; reported as ``device.name`` in every row.
    """

    url: str = "local"

    def bench(
        self,
        models: Sequence,
        data=None,
        *,
        names: Sequence[str] | None = None,
        threads: int = 1,
        warmup: int = DEFAULT_WARMUP,
        runs: int = DEFAULT_RUNS,
        delegate: str | None = None,
    ) -> Iterator[Row]:
        """Run the runner on ``models`` and yield one row per model as each finishes.

        Rows are result dicts (the bench JSON schema) or error rows
        ``{"model", "device": {"name"}, "error", "hint", "error_kind"}``. Results already
        received are always yielded, also when the device fails afterwards.

        Raises:
            InputFileError: a model or data file is missing.
            RemoteError: the device cannot be used at all (unreachable, host key, key refused);
                no row has been yielded then.
        """
        models = [Path(m) for m in models]
        for path in [*models, *([Path(data)] if data is not None else [])]:
            if not path.is_file():
                raise InputFileError(
                    f"file not found: {path}", "pass existing .tflite models and an .npz data file"
                )
        names = [str(m) for m in models] if names is None else [str(n) for n in names]
        if len(names) != len(models):
            raise ValueError(f"{len(names)} names for {len(models)} models")
        options = _runner_options(threads, warmup, runs, delegate)
        argv = self._start_argv(models, None if data is None else Path(data), options)
        yield from self._stream(argv, names)

    # -- for subclasses
    def _start_argv(self, models, data, options) -> list[str]:
        raise NotImplementedError

    def _device_extra(self) -> dict:
        return {}

    def _failure(self, returncode: int, stderr: str, running: bool = False) -> RemoteError | None:
        """The transport failure this exit means, or None if the runner itself exited.

        ``running``: the exit ended a run of the runner (not a short command).
        """
        return None

    run_timeout: float | None = None

    def close(self) -> None:
        """Release connections (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _stream(self, argv: list[str], names: list[str]) -> Iterator[Row]:
        """Start ``argv``, map its JSON lines to rows, and account for every model at the end."""
        proc = popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self._proc = proc
        stderr_tail: deque[str] = deque(maxlen=200)
        reader = threading.Thread(
            target=lambda: stderr_tail.extend(proc.stderr), name="tfedge-stderr", daemon=True
        )
        reader.start()
        timed_out = threading.Event()
        timer = None
        if self.run_timeout:

            def expire():
                timed_out.set()
                _kill(proc)

            timer = threading.Timer(self.run_timeout, expire)
            timer.daemon = True
            timer.start()
        done: set[int] = set()
        fatal: dict | None = None
        others: list[str] = []
        try:
            for line in proc.stdout:
                event = _parse_line(line)
                if event is None:
                    if line.strip():
                        others.append(line.strip())
                    continue
                kind = event.get("type")
                index = _index(event.get("model"), names)
                if kind == "result":
                    result = event.get("result") or {}
                    index = _index(result.get("model"), names)
                    if index is None or index in done:
                        continue
                    done.add(index)
                    yield self._result_row(result, names[index])
                elif kind == "error" and index is not None and index not in done:
                    done.add(index)
                    yield self._error_row(
                        names[index],
                        RemoteError(event.get("message") or "failed", event.get("hint"), "runner"),
                    )
                elif kind == "error":
                    fatal = event
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                _kill(proc)
                proc.wait()
            reader.join(timeout=5)
            self._proc = None
        missing = [i for i in range(len(names)) if i not in done]
        if not missing:
            return
        error = self._end_error(proc.returncode, "".join(stderr_tail), fatal, others, timed_out)
        if done and error.kind in ("connection_lost", "runner", "timeout"):
            error.message += f" ({len(done)} of {len(names)} models finished before)"
        for i in missing:
            yield self._error_row(names[i], error)

    def _end_error(self, returncode, stderr, fatal, others, timed_out) -> RemoteError:
        if timed_out.is_set():
            return RemoteError(
                f"the run on {self.url} took longer than {self.run_timeout:g} s and was stopped",
                "give fewer --runs, or a longer timeout",
                "timeout",
            )
        failure = self._failure(returncode, stderr, running=True)
        if failure is not None:
            return failure
        if fatal is not None:
            message = fatal.get("message") or "the runner failed"
            kind = "no_interpreter" if _is_no_interpreter(fatal) else "runner"
            return RemoteError(f"{self.url}: {message}", fatal.get("hint"), kind)
        detail = last_lines(stderr) or last_lines("\n".join(others))
        return RemoteError(
            f"the runner on {self.url} stopped ({exit_text(returncode)}) before reporting "
            f"every model" + (f": {detail}" if detail else ""),
            "run it by hand to see the whole output: python3 runner.py --model MODEL.tflite",
            "runner",
        )

    def _result_row(self, result: dict, name: str) -> Row:
        row = dict(result)
        row["model"] = name
        device = dict(row.get("device") or {})
        device["name"] = self.url
        device.update(self._device_extra())
        row["device"] = device
        return row

    def _error_row(self, name: str, error: RemoteError) -> Row:
        return {
            "model": name,
            "device": {"name": self.url},
            "error": error.message,
            "hint": error.hint,
            "error_kind": error.kind,
        }

    def cancel(self) -> None:
        """Stop a run in progress (its unfinished models become error rows)."""
        proc = getattr(self, "_proc", None)
        if proc is not None:
            _kill(proc)


class LocalDevice(Device):
    """This machine: the runner runs in a ``sys.executable`` subprocess, like on a device.

    Args:
        python: the Python command (default: the running interpreter).
        timeout: seconds one run may take (None: no limit).

    Example:
        >>> rows = list(LocalDevice().bench(["model.tflite"], runs=10))  # doctest: +SKIP
    """

    def __init__(self, python: str | Sequence[str] | None = None, timeout: float | None = None):
        self.url = "local"
        self.python = python_argv(python) if python else [sys.executable]
        self.run_timeout = timeout
        self._proc = None

    def __repr__(self) -> str:
        return "LocalDevice()"

    def _start_argv(self, models, data, options) -> list[str]:
        argv = [*self.python, str(RUNNER_PATH)]
        for i, model in enumerate(models):
            argv += ["--model", str(model.resolve()), "--name", str(i)]
        if data is not None:
            argv += ["--data", str(data.resolve())]
        return argv + options + ["--device-name", self.url]


def local_device(url: str = "local", ssh_config=None, **options) -> LocalDevice:
    """The ``local`` kind's factory (:mod:`tfedge.devices.kinds`); only ``timeout`` applies.

    Example:
        >>> local_device("local", timeout=60).run_timeout
        60
    """
    return LocalDevice(timeout=options.get("timeout"))


def _runner_options(threads, warmup, runs, delegate) -> list[str]:
    options = ["--threads", str(int(threads)), "--warmup", str(int(warmup))]
    options += ["--runs", str(int(runs))]
    if delegate:
        options += ["--delegate", str(delegate)]
    return options


def _parse_line(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _index(name, names: list[str]) -> int | None:
    """The model index the runner reports (we pass ``--name 0``, ``--name 1``, ...)."""
    if isinstance(name, str) and name.isdigit() and int(name) < len(names):
        return int(name)
    return None


def _is_no_interpreter(event: dict) -> bool:
    if event.get("code") == "no_interpreter":
        return True
    return "no tflite interpreter" in (event.get("message") or "").lower()


def python_argv(python) -> list[str]:
    words = shlex.split(python) if isinstance(python, str) else [str(w) for w in python]
    if not words:
        raise ValueError("python must name a command, e.g. 'python3'")
    return words


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def last_lines(text: str, count: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("INFO: ")]
    return " | ".join(lines[-count:])


def exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode > 128:
        try:
            return f"exit status {returncode}, {signal.Signals(returncode - 128).name}"
        except ValueError:
            pass
    return f"exit status {returncode}"


def popen(argv: list[str], **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, **kwargs)
    except FileNotFoundError as exc:
        raise no_program(argv[0]) from exc


def no_program(program: str) -> RemoteError:
    if os.path.basename(program) == "ssh":
        return RemoteError(
            f"the OpenSSH client {program!r} is not installed (or not on PATH)",
            "install it: apt-get install openssh-client (Debian/Ubuntu), "
            "dnf install openssh-clients (Fedora), or use --device local",
            "bad_config",
        )
    return RemoteError(
        f"cannot run {program!r}: not found",
        "check the python command for the device (python='python3')",
        "bad_config",
    )


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except OSError:
        pass
