"""Bench models on several devices at once; a dead or slow device gives error rows, not a crash.

Example:
    >>> rows = bench_fleet(["local", "ssh://pi@raspberrypi"], ["model.tflite"],
    ...                    data="digits.npz", runs=50)  # doctest: +SKIP
    >>> [(r["device"]["name"], r.get("accuracy"), r.get("error")) for r in rows]  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tfedge.core.errors import InputFileError
from tfedge.devices.kinds import URL_FORMS, parse_device
from tfedge.devices.protocol import Device, RemoteError
from tfedge.devices.runner import DEFAULT_RUNS, DEFAULT_WARMUP

__all__ = ["bench_on_device", "bench_fleet"]

Row = dict
OnResult = Callable[[Row], None]


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
        One row per model: a result dict (the bench JSON schema, ``device.name`` = the URL) or an
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


def _fail_rest(dev, names, rows, error: RemoteError, emit) -> None:
    seen = {row.get("model") for row in rows}
    for name in names:
        if name not in seen:
            emit(dev._error_row(name, error))
