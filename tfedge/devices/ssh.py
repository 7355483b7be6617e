"""ssh devices (``ssh://[USER@]HOST[:PORT]``), the ``ssh`` kind of :mod:`tfedge.devices.kinds`.

ssh devices use the system OpenSSH client (key authentication only, ``BatchMode``, never an
unchecked host key) and one multiplexed connection per device. Files are cached on the device
under ``~/.cache/tfedge/`` by sha256, so a second run uploads nothing. Every path and argument
sent to the remote shell is quoted: nothing a file name contains is run as shell. The remote
login shell must be a POSIX shell (sh, bash, dash, zsh, ash).

Example:
    >>> device = parse_device("ssh://pi@raspberrypi")  # doctest: +SKIP
    >>> rows = list(device.bench(["model.tflite"], data="digits.npz"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

from tfedge.devices.kinds import parse_device
from tfedge.devices.protocol import (
    RUNNER_PATH,
    Device,
    RemoteError,
    exit_text,
    last_lines,
    no_program,
    popen,
    python_argv,
    sha256_file,
)
from tfedge.devices.urls import IPV6_RE, NAME_RE, bad_url, parse_ssh_url

__all__ = ["SshDevice", "ssh_device", "parse_device", "DEFAULT_CONNECT_TIMEOUT"]

DEFAULT_CONNECT_TIMEOUT = 10.0
REMOTE_CACHE = "~/.cache/tfedge"

Row = dict


def ssh_device(url: str, ssh_config=None, **options) -> SshDevice:
    """The ``ssh`` kind's factory (:mod:`tfedge.devices.kinds`): ``ssh://[USER@]HOST[:PORT]``.

    Args:
        url: ``ssh://[USER@]HOST[:PORT]``, each part checked (:func:`parse_ssh_url`).
        ssh_config: an ssh config file to use instead of the user's (``ssh -F``).
        **options: passed on to :class:`SshDevice` (``connect_timeout``, ``timeout``, ``python``,
            ``remote_dir``, ``multiplex``).

    Raises:
        RemoteError: (kind ``bad_url``) when the URL is not one of the accepted forms.

    Example:
        >>> ssh_device("ssh://pi@raspberrypi:2222").port
        2222
    """
    user, host, port = parse_ssh_url(url)
    return SshDevice(host, user=user, port=port, url=url.strip(), ssh_config=ssh_config, **options)


# ------------------------------------------------------------------------------------ devices


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
        if not NAME_RE.match(host) and not IPV6_RE.match(f"[{host}]"):
            raise bad_url(host, f"the host {host!r} is not a host name, address or ssh alias")
        if user is not None and not NAME_RE.match(user):
            raise bad_url(user, f"the user name {user!r} is not a valid user name")
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
        self.python = python_argv(python)
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
                    self._master = popen(
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
            raise no_program(argv[0]) from exc
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
        runner_name = f"runner-{sha256_file(RUNNER_PATH)}.py"
        files = {runner_name: RUNNER_PATH}
        model_names = []
        for model in models:
            name = f"{sha256_file(model)}.tflite"
            files[name] = model
            model_names.append(name)
        data_name = None
        if data is not None:
            data_name = f"{sha256_file(data)}.npz"
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
        detail = last_lines(text) or "ssh exited with status 255 and no message"
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
        detail = last_lines(stderr) or "no message"
        return RemoteError(
            f"a command on {self.url} failed ({exit_text(returncode)}): {detail}",
            f"check the device by hand: {self.by_hand()}",
            "ssh",
        )


# ------------------------------------------------------------------------------------ public API
