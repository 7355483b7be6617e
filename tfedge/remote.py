"""Run tfedge's device runner on devices: ``local`` or ``ssh://[USER@]HOST[:PORT]``.

The transport behind ``tfedge bench --device``. A device runs the one-file runner
(:mod:`tfedge.runner`) with ``python3`` and streams one JSON line per model back; the local
device runs the same file in a subprocess, so local and ssh devices share one code path and give
rows of the same schema (design.md), with ``model`` set to the host-side name and
``device.name`` set to the URL given.

ssh devices use the system OpenSSH client (key authentication only, ``BatchMode``, never an
unchecked host key) and one multiplexed connection per device. Files are cached on the device
under ``~/.cache/tfedge/`` by sha256, so a second run uploads nothing. Every path and argument
sent to the remote shell is quoted: nothing a file name contains is run as shell. The remote
login shell must be a POSIX shell (sh, bash, dash, zsh, ash).

This module imports no TensorFlow (stdlib only; numpy is not needed on the host side either).

Example:
    >>> rows = bench_fleet(["local", "ssh://pi@raspberrypi"], ["model.tflite"],
    ...                    data="digits.npz", runs=50)  # doctest: +SKIP
    >>> [(r["device"]["name"], r.get("accuracy"), r.get("error")) for r in rows]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from tfedge.errors import DeviceError, InputFileError

__all__ = [
    "Device",
    "LocalDevice",
    "SshDevice",
    "RemoteError",
    "parse_device",
    "bench_on_device",
    "bench_fleet",
    "DEFAULT_CONNECT_TIMEOUT",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_WARMUP = 20
DEFAULT_RUNS = 200
REMOTE_CACHE = "~/.cache/tfedge"
RUNNER_PATH = Path(__file__).with_name("runner.py")
URL_FORMS = "local, or ssh://[USER@]HOST[:PORT] (HOST may be a Host alias of your ssh config)"

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]$")

Row = dict
OnResult = Callable[[Row], None]


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


def parse_device(url: str, ssh_config=None, **options) -> Device:
    """Turn a device URL into a :class:`Device`.

    Args:
        url: ``local`` or ``ssh://[USER@]HOST[:PORT]``. HOST is a host name, an IPv4 address,
            a bracketed IPv6 address, or a ``Host`` alias of the ssh config in use.
        ssh_config: an ssh config file to use instead of the user's (``ssh -F``).
        **options: passed on to :class:`SshDevice` (``connect_timeout``, ``timeout``, ``python``,
            ``remote_dir``, ``multiplex``).

    Returns:
        A :class:`LocalDevice` or an :class:`SshDevice`.

    Raises:
        RemoteError: (kind ``bad_url``) when the URL is not one of the accepted forms.

    Example:
        >>> parse_device("ssh://pi@raspberrypi:2222").port
        2222
        >>> parse_device("local").url
        'local'
    """
    if not isinstance(url, str):
        raise _bad_url(url, "a device URL must be a string")
    text = url.strip()
    if text == "local":
        return LocalDevice(timeout=options.get("timeout"))
    if "://" not in text:
        hint = f"write ssh://{text}" if _NAME_RE.match(text) else None
        raise _bad_url(url, "it has no scheme", hint)
    scheme, _, rest = text.partition("://")
    if scheme != "ssh":
        raise _bad_url(url, f"unknown scheme {scheme!r}")
    if any(c in rest for c in "/?#") or any(c.isspace() for c in rest):
        raise _bad_url(url, "a path, query or spaces follow the host")
    user = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if ":" in user:
            raise _bad_url(
                url, "it carries a password", "tfedge uses ssh keys only: drop ':PASSWORD'"
            )
        if not _NAME_RE.match(user):
            raise _bad_url(url, f"the user name {user!r} is not a valid user name")
    port = None
    if rest.startswith("["):
        host, sep, tail = rest.partition("]")
        host += sep
        if not _IPV6_RE.match(host):
            raise _bad_url(url, f"{host!r} is not a bracketed IPv6 address")
        host = host[1:-1]
    else:
        host, colon, tail = rest.partition(":")
        tail = colon + tail
        if not _NAME_RE.match(host or "-"):
            raise _bad_url(url, f"the host {host!r} is not a host name, address or ssh alias")
    if tail:
        digits = tail[1:]
        if not tail.startswith(":") or not digits.isdigit() or not 0 < int(digits) < 65536:
            raise _bad_url(url, f"the port {tail[1:]!r} is not a number from 1 to 65535")
        port = int(digits)
    return SshDevice(host, user=user, port=port, url=text, ssh_config=ssh_config, **options)


def _bad_url(url, why: str, hint: str | None = None) -> RemoteError:
    return RemoteError(
        f"bad device URL {url!r}: {why}; expected {URL_FORMS}",
        hint or "e.g. --device local, --device ssh://pi@192.168.1.20, --device ssh://tfedge-pi",
        kind="bad_url",
    )


# ------------------------------------------------------------------------------------ devices


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

        Rows are result dicts (design.md schema) or error rows
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
        proc = _popen(
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
        detail = _last_lines(stderr) or _last_lines("\n".join(others))
        return RemoteError(
            f"the runner on {self.url} stopped ({_exit_text(returncode)}) before reporting "
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
        self.python = _python_argv(python) if python else [sys.executable]
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


def _stop_master(master: subprocess.Popen, control_argv: list[str], control_dir: str) -> None:
    """End an ssh master connection we started: ask it to exit, else kill it; remove its dir.

    Runs from :meth:`SshDevice.close`, or as the finalizer of a device that was never closed
    (garbage-collected, or still open when Python exits): no master outlives its device.
    """
    if master.poll() is None:
        try:  # ask the master to exit (a SIGTERM can wait for channels to drain)
            subprocess.run(control_argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=5)
            master.wait(timeout=2)
        except (subprocess.TimeoutExpired, OSError):
            pass
    if master.poll() is None:
        master.kill()
        master.wait()
    shutil.rmtree(control_dir, ignore_errors=True)


class SshDevice(Device):
    """A device reached with the system OpenSSH client (``ssh``), key authentication only.

    Files go to ``remote_dir`` on the device, named by sha256, and are uploaded only when
    missing there. One master connection is shared by all the calls of a run (multiplexing),
    and closed by :meth:`close`.

    Args:
        host: host name, address or ``Host`` alias of the ssh config.
        user: the login user (default: the ssh config's, else yours).
        port: the port (default: the ssh config's, else 22).
        url: the URL to report as ``device.name`` (default: built from the above).
        ssh_config: an ssh config file to use instead of the user's (``ssh -F FILE``).
        connect_timeout: seconds to wait for the connection.
        timeout: seconds one run of the runner may take (None: no limit).
        python: the Python command on the device (default ``python3``); a string is split
            like a shell would (``"python3 -X faulthandler"``), each word is quoted.
        remote_dir: the cache directory on the device (``~/`` means the login's home).
        multiplex: share one ssh connection between calls (ControlMaster).
        ssh: the ssh client program.

    Example:
        >>> with SshDevice("tfedge-pi", ssh_config=".device/ssh_config") as pi:  # doctest: +SKIP
        ...     rows = list(pi.bench(["model.tflite"], data="digits.npz", runs=5))
    """

    def __init__(
        self,
        host: str,
        user: str | None = None,
        port: int | None = None,
        *,
        url: str | None = None,
        ssh_config=None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = None,
        python: str | Sequence[str] = "python3",
        remote_dir: str = REMOTE_CACHE,
        multiplex: bool = True,
        ssh: str = "ssh",
    ):
        if not _NAME_RE.match(host) and not _IPV6_RE.match(f"[{host}]"):
            raise _bad_url(host, f"the host {host!r} is not a host name, address or ssh alias")
        if user is not None and not _NAME_RE.match(user):
            raise _bad_url(user, f"the user name {user!r} is not a valid user name")
        self.host = host
        self.user = user
        self.port = port
        if url is None:
            shown = f"[{host}]" if ":" in host else host
            url = f"ssh://{user + '@' if user else ''}{shown}{f':{port}' if port else ''}"
        self.url = url
        self.ssh_config = None if ssh_config is None else str(Path(ssh_config).expanduser())
        if self.ssh_config is not None and not Path(self.ssh_config).is_file():
            raise RemoteError(
                f"ssh config not found: {self.ssh_config}",
                "pass an existing file to --ssh-config (e.g. .device/ssh_config after "
                "`make device-up`)",
                "bad_config",
            )
        self.connect_timeout = float(connect_timeout)
        self.run_timeout = timeout
        self.python = _python_argv(python)
        self.remote_dir = remote_dir
        self.multiplex = multiplex
        self.ssh = ssh
        self.emulated: bool | None = None
        self.last_uploads: list[str] = []
        self._control_dir: str | None = None
        self._master: subprocess.Popen | None = None
        self._master_log: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()
        self._proc = None

    def __repr__(self) -> str:
        return f"SshDevice({self.url!r})"

    # -- ssh command lines
    def ssh_argv(self, command: str | None = None, *, master: bool = False) -> list[str]:
        """The ssh argv that runs ``command`` (a remote shell command line) on the device."""
        argv = [self.ssh]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        argv += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-T",
        ]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        if self._control_dir:
            argv += ["-o", f"ControlPath={self._control_dir}/%C"]
            argv += ["-o", "ControlMaster=yes" if master else "ControlMaster=no"]
            if master:
                argv += ["-o", "ControlPersist=no", "-N"]
        argv.append(self.host)
        if command is not None:
            argv.append(command)
        return argv

    def by_hand(self) -> str:
        """The ssh command a user can type to try this device by hand."""
        argv = ["ssh"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return shlex.join([*argv, self.host])

    # -- connection
    def connect(self) -> None:
        """Open the shared master connection (no-op when open or when multiplexing is off).

        Raises:
            RemoteError: unreachable, host key not trusted, key refused, or another ssh failure.
        """
        with self._lock:
            if self._master is not None and self._master.poll() is None:
                return
            self._close_master()
            if not self.multiplex:
                self.run("true", timeout=self.connect_timeout + 30)
                return
            self._control_dir = tempfile.mkdtemp(prefix="tfedge-ssh-")
            self._master_log = os.path.join(self._control_dir, "master.log")
            try:
                with open(self._master_log, "wb") as log:
                    self._master = _popen(
                        self.ssh_argv(master=True),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                    )
            except RemoteError:
                self._close_master()
                raise
            self._finalizer = weakref.finalize(
                self, _stop_master, self._master, self._control_argv("exit"), self._control_dir
            )
            deadline = time.monotonic() + self.connect_timeout + 60
            while True:
                if self._master.poll() is not None:
                    stderr = Path(self._master_log).read_text(errors="replace")
                    returncode = self._master.returncode
                    self._close_master()
                    raise self._failure(returncode, stderr) or self._generic(returncode, stderr)
                check = subprocess.run(
                    self._control_argv("check"),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                )
                if check.returncode == 0:
                    return
                if time.monotonic() > deadline:
                    self._close_master()
                    raise RemoteError(
                        f"cannot connect to {self.url}: no session after "
                        f"{self.connect_timeout + 60:g} s",
                        f"try it by hand: {self.by_hand()} true",
                        "unreachable",
                    )
                time.sleep(0.1)

    def _control_argv(self, operation: str) -> list[str]:
        """``ssh -O check|exit`` for the master connection."""
        argv = [self.ssh]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        argv += ["-o", f"ControlPath={self._control_dir}/%C", "-O", operation]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, self.host]

    def close(self) -> None:
        """Close the master connection and remove its socket directory (idempotent)."""
        with self._lock:
            self._close_master()

    def _close_master(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_master once
            self._finalizer = None
        elif self._control_dir:
            shutil.rmtree(self._control_dir, ignore_errors=True)
        self._master = None
        self._control_dir = None

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> str:
        """Run a remote shell command line; return its stdout.

        ``command`` is given to the device's login shell as is: quote every value in it with
        :func:`shlex.quote`.

        Raises:
            RemoteError: ssh failed (with its kind), the command failed, or it timed out.
        """
        argv = self.ssh_argv(command)
        try:
            proc = subprocess.run(
                argv,
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise _no_program(argv[0]) from exc
        except subprocess.TimeoutExpired as exc:
            raise RemoteError(
                f"{self.url} did not finish `{command[:80]}` within {timeout:g} s",
                f"check the device (by hand: {self.by_hand()})",
                "timeout",
            ) from exc
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            raise self._failure(proc.returncode, stderr) or self._generic(proc.returncode, stderr)
        return proc.stdout.decode(errors="replace")

    # -- files
    def _remote_dir_expr(self) -> str:
        """The cache directory as a shell word (``~/`` becomes ``"$HOME"/``, the rest quoted)."""
        if self.remote_dir == "~":
            return '"$HOME"'
        if self.remote_dir.startswith("~/"):
            return '"$HOME"/' + shlex.quote(self.remote_dir[2:])
        return shlex.quote(self.remote_dir)

    def prepare(self, files: dict[str, Path]) -> list[str]:
        """Make sure the device has each file (``{remote name: local path}``) in its cache.

        One ssh call lists what is missing (and tells whether the device is emulated), then each
        missing file is uploaded through stdin to a temporary name, its size checked, and
        renamed into place (a cut upload never leaves a bad file under the final name).

        Returns:
            The remote names uploaded.
        """
        self.connect()
        names = " ".join(shlex.quote(name) for name in files)
        check = (
            f'd={self._remote_dir_expr()} && mkdir -p "$d" && cd "$d" && '
            f'for f in {names}; do [ -f "$f" ] || echo "missing $f"; done; '
            'echo "exe $(readlink /proc/$$/exe 2>/dev/null)"; echo "machine $(uname -m)"'
        )
        out = self.run(check, timeout=self.connect_timeout + 60)
        missing = []
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            if key == "missing":
                missing.append(value.strip())
            elif key == "exe":
                self.emulated = "qemu" in os.path.basename(value.strip())
        for name in missing:
            path = files[name]
            size = path.stat().st_size
            tmp = f".tmp-{os.getpid()}-{threading.get_ident()}-{name}"
            upload = (
                f"cd {self._remote_dir_expr()} && cat > {shlex.quote(tmp)} && "
                f'[ "$(wc -c < {shlex.quote(tmp)})" -eq {size} ] && '
                f"mv -f {shlex.quote(tmp)} {shlex.quote(name)} || "
                f"{{ rm -f {shlex.quote(tmp)}; exit 3; }}"
            )
            try:
                self.run(upload, stdin=path.read_bytes(), timeout=60 + size / 100_000)
            except RemoteError as exc:
                if exc.kind == "ssh":
                    exc.message = f"upload of {path} to {self.url} failed: {exc.message}"
                    exc.kind = "connection_lost"
                raise
        self.last_uploads = missing
        return missing

    # -- the runner
    def bench(self, models, data=None, **kwargs) -> Iterator[Row]:  # noqa: D102 (see Device)
        self.last_uploads = []
        return super().bench(models, data, **kwargs)

    def _start_argv(self, models, data, options) -> list[str]:
        runner_name = f"runner-{_sha256(RUNNER_PATH)}.py"
        files = {runner_name: RUNNER_PATH}
        model_names = []
        for model in models:
            name = f"{_sha256(model)}.tflite"
            files[name] = model
            model_names.append(name)
        data_name = None
        if data is not None:
            data_name = f"{_sha256(data)}.npz"
            files[data_name] = data
        self.prepare(files)
        words = [*self.python, runner_name]
        for i, name in enumerate(model_names):
            words += ["--model", name, "--name", str(i)]
        if data_name:
            words += ["--data", data_name]
        words += [*options, "--device-name", self.url]
        command = f"cd {self._remote_dir_expr()} && exec " + " ".join(shlex.quote(w) for w in words)
        return self.ssh_argv(command)

    def _device_extra(self) -> dict:
        return {} if self.emulated is None else {"emulated": self.emulated}

    def _failure(self, returncode: int, stderr: str, running: bool = False) -> RemoteError | None:
        """Classify an ssh failure (exit 255) from its stderr; None when ssh itself was fine.

        ``running``: ssh ended a run of the runner; an unexplained 255 then means the
        connection was lost (the runner never exits 255; a multiplexed session whose master
        connection died exits 255 without a word).
        """
        if returncode != 255:
            return None
        text = "\n".join(
            line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO: ")
        )
        detail = _last_lines(text) or "ssh exited with status 255 and no message"
        low = text.lower()
        by_hand = self.by_hand()
        if "identification has changed" in low or ("host key for" in low and "changed" in low):
            return RemoteError(
                f"the host key of {self.url} has CHANGED since it was last trusted ({detail})",
                "if the device was re-installed, remove the old key (ssh-keygen -R HOST) and "
                f"connect once by hand to check and accept the new one: {by_hand}",
                "host_key",
            )
        if (
            "host key verification failed" in low
            or "host key is known" in low
            or "no matching host key" in low
        ):
            return RemoteError(
                f"the host key of {self.url} is not trusted: it is not in known_hosts ({detail})",
                "check the device's key fingerprint and add it: connect once by hand "
                f"({by_hand}) and accept it, or add its line to your known_hosts file; "
                "tfedge never accepts an unknown host key",
                "host_key",
            )
        if "permission denied" in low or "too many authentication failures" in low:
            return RemoteError(
                f"{self.url} refused the ssh key ({detail})",
                "tfedge logs in with ssh keys only: install your public key on the device "
                "(ssh-copy-id USER@HOST), or name the key with IdentityFile in your ssh config "
                "/ --ssh-config",
                "auth",
            )
        unreachable = (
            "connection refused",
            "connection timed out",
            "operation timed out",
            "timed out during banner exchange",
            "no route to host",
            "network is unreachable",
            "could not resolve hostname",
            "name or service not known",
            "temporary failure in name resolution",
            "kex_exchange_identification",
        )
        if any(pattern in low for pattern in unreachable):
            return RemoteError(
                f"cannot reach device {self.url}: {detail}",
                "check that the device is on, on the network and runs sshd, and that the host "
                f"and port are right (try: {by_hand} true); for the emulated Pi run "
                "`make device-up`",
                "unreachable",
            )
        lost = (
            "connection closed",
            "connection reset",
            "broken pipe",
            "closed by remote host",
            "timeout, server",
            "not responding",
            "mux_client",
            "control socket",
            "master",
            "no message",
        )
        if running or any(pattern in low for pattern in lost) or not text:
            return RemoteError(
                f"lost the connection to {self.url} mid-run: {detail}",
                f"the device went away (powered off, crashed, network dropped); check it with "
                f"{by_hand} true and run again",
                "connection_lost",
            )
        return RemoteError(
            f"ssh to {self.url} failed: {detail}", f"try it by hand: {by_hand} true", "ssh"
        )

    def _generic(self, returncode: int, stderr: str) -> RemoteError:
        detail = _last_lines(stderr) or "no message"
        return RemoteError(
            f"a command on {self.url} failed ({_exit_text(returncode)}): {detail}",
            f"check the device by hand: {self.by_hand()}",
            "ssh",
        )


# ------------------------------------------------------------------------------------ public API


def bench_on_device(
    device,
    models: Sequence,
    data=None,
    *,
    names: Sequence[str] | None = None,
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    delegate: str | None = None,
    ssh_config=None,
    on_result: OnResult | None = None,
    **options,
) -> list[Row]:
    """Bench ``models`` on one device; never raises for a device failure (it becomes rows).

    Args:
        device: a URL (``local``, ``ssh://[USER@]HOST[:PORT]``) or a :class:`Device`.
        models: ``.tflite`` paths.
        data: an ``.npz`` file with ``x`` (and ``y`` for accuracy), or None (random input).
        names: the names to report as ``model`` (default: the paths as given).
        threads: interpreter threads.
        warmup: untimed invocations per model.
        runs: timed invocations per model.
        delegate: ``"edgetpu"`` or None.
        ssh_config: an ssh config file (``ssh -F``) when ``device`` is a URL.
        on_result: called with each row as it arrives.
        **options: for :func:`parse_device` (``connect_timeout``, ``timeout``, ``python``...).

    Returns:
        One row per model: a result dict (design.md schema, ``device.name`` = the URL) or an
        error row ``{"model", "device": {"name"}, "error", "hint", "error_kind"}``. Results
        that arrived before a failure are kept.

    Raises:
        RemoteError: only for a malformed URL (kind ``bad_url``).
        InputFileError: a model or data file is missing.

    Example:
        >>> rows = bench_on_device("ssh://tfedge-pi", ["model.tflite"], data="d.npz",
        ...                        ssh_config=".device/ssh_config", runs=5)  # doctest: +SKIP
    """
    own = not isinstance(device, Device)
    dev = parse_device(device, ssh_config=ssh_config, **options) if own else device
    names = [str(m) for m in models] if names is None else [str(n) for n in names]
    rows: list[Row] = []

    def emit(row):
        rows.append(row)
        if on_result:
            on_result(row)

    rows_in = dev.bench(
        models, data, names=names, threads=threads, warmup=warmup, runs=runs, delegate=delegate
    )
    try:
        for row in rows_in:
            emit(row)
    except RemoteError as exc:
        if exc.kind in ("bad_url", "bad_config"):
            raise
        _fail_rest(dev, names, rows, exc, emit)
    except InputFileError:
        raise
    except Exception as exc:  # an unexpected failure must not lose the other rows
        _fail_rest(dev, names, rows, RemoteError(f"{dev.url}: {exc!r}", None, "internal"), emit)
    finally:
        rows_in.close()  # stops the runner if we leave early (a failing on_result, Ctrl-C)
        if own:
            dev.close()
    return rows


def bench_fleet(
    devices: Iterable,
    models: Sequence,
    data=None,
    *,
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    delegate: str | None = None,
    ssh_config=None,
    on_result: OnResult | None = None,
    names: Sequence[str] | None = None,
    **options,
) -> list[Row]:
    """Bench the same models on several devices in parallel (one thread per device).

    What ``tfedge bench --device URL [--device URL ...]`` calls. Each device's failure
    (unreachable, key refused, no interpreter, died mid-run) becomes error rows for that device
    only: the other devices' rows are kept. ``on_result`` is called with each row as it arrives,
    one call at a time (the CLI rewrites its JSON file there).

    Args:
        devices: URLs (``local``, ``ssh://[USER@]HOST[:PORT]``) or :class:`Device` objects.
        models: ``.tflite`` paths.
        data: an ``.npz`` file with ``x`` (and ``y``), or None for a random input.
        threads: interpreter threads.
        warmup: untimed invocations per model.
        runs: timed invocations per model.
        delegate: ``"edgetpu"`` or None.
        ssh_config: an ssh config file to use instead of the user's (``ssh -F``).
        on_result: called with each row (result or error) as it arrives.
        names: the names to report as ``model`` (default: the paths as given).
        **options: for :class:`SshDevice` (``connect_timeout``, ``timeout``, ``python``...).

    Returns:
        All rows, in the order they arrived.

    Raises:
        RemoteError: a malformed device URL (kind ``bad_url``), before anything runs.
        InputFileError: a model or data file is missing, before anything runs.

    Example:
        >>> rows = bench_fleet(["ssh://tfedge-pi", "local"], ["a.tflite", "b.tflite"],
        ...                    data="digits.npz", runs=20,
        ...                    ssh_config=".device/ssh_config")  # doctest: +SKIP
        >>> errors = [r for r in rows if r.get("error")]  # doctest: +SKIP
    """
    parsed = [
        d if isinstance(d, Device) else parse_device(d, ssh_config=ssh_config, **options)
        for d in devices
    ]
    if not parsed:
        raise RemoteError("no device given", f"name one: {URL_FORMS}", "bad_url")
    for path in [*models, *([data] if data is not None else [])]:
        if not Path(path).is_file():
            raise InputFileError(
                f"file not found: {path}", "pass existing .tflite models and an .npz data file"
            )
    rows: list[Row] = []
    lock = threading.Lock()

    def emit(row):
        with lock:
            rows.append(row)
            if on_result:
                on_result(row)

    def work(dev):
        bench_on_device(
            dev,
            models,
            data,
            names=names,
            threads=threads,
            warmup=warmup,
            runs=runs,
            delegate=delegate,
            on_result=emit,
        )

    workers = [
        threading.Thread(target=work, args=(dev,), name=f"tfedge-{dev.url}", daemon=True)
        for dev in parsed
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            while worker.is_alive():
                worker.join(timeout=0.2)
    except KeyboardInterrupt:
        for dev in parsed:
            dev.cancel()
        raise
    finally:
        for dev in parsed:
            dev.close()
    return rows


# ------------------------------------------------------------------------------------ helpers


def _runner_options(threads, warmup, runs, delegate) -> list[str]:
    options = ["--threads", str(int(threads)), "--warmup", str(int(warmup))]
    options += ["--runs", str(int(runs))]
    if delegate:
        options += ["--delegate", str(delegate)]
    return options


def _python_argv(python) -> list[str]:
    words = shlex.split(python) if isinstance(python, str) else [str(w) for w in python]
    if not words:
        raise ValueError("python must name a command, e.g. 'python3'")
    return words


def _fail_rest(dev, names, rows, error: RemoteError, emit) -> None:
    seen = {row.get("model") for row in rows}
    for name in names:
        if name not in seen:
            emit(dev._error_row(name, error))


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _last_lines(text: str, count: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("INFO: ")]
    return " | ".join(lines[-count:])


def _exit_text(returncode: int | None) -> str:
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


def _popen(argv: list[str], **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, **kwargs)
    except FileNotFoundError as exc:
        raise _no_program(argv[0]) from exc


def _no_program(program: str) -> RemoteError:
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
