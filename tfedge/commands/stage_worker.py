"""Run compression stages in a child process, so a native crash fails one candidate, not the search.

TensorFlow's C++ side can abort or crash the whole process (a SIGABRT or SIGSEGV inside tf_keras's
``fit`` has been seen during filter-pruning fine-tunes), and no ``except`` catches that. The search
therefore runs every fine-tune in a long-lived child Python process: it loads the base model, the
frozen teacher and the data once, then runs one stage per request and saves the result where it is
told. When a signal ends the child, the stage runs once more in a fresh child with TensorFlow's
oneDNN CPU kernels off (``TF_ENABLE_ONEDNN_OPTS=0``): the crashes seen here (``free(): invalid
pointer``, then SIGABRT or SIGSEGV, in ``fit`` of a ResNet whose filters were pruned) come from
oneDNN and do not happen without it. Only if that child dies too does the stage raise
:class:`StageCrashed`, naming the signal; the candidate is recorded as failed, and the next stage
starts a fresh child (oneDNN on). A child that exits with a status (not a signal) is not retried.

Requests go to the child's stdin and answers come back on a pipe of their own (one JSON object per
line each way); the child's stdout and stderr are the parent's, so its progress shows as usual.
The child exits when its stdin closes, and is killed with its parent (Linux's parent-death signal,
which follows the thread that started the child: use one worker from one thread).

Example:
    >>> worker = StageWorker("cache/base.keras", "cache/train.npz", "val.npz")  # doctest: +SKIP
    >>> worker.run("cache/base.keras", {"name": "qat", "epochs": 1}, "cache/qat.keras")  # doctest: +SKIP
    >>> worker.close()  # doctest: +SKIP
"""

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from tfedge.core.console import echo
from tfedge.core.errors import OptimizationError, first_line
from tfedge.models.stages import run_stage, save_atomically

__all__ = [
    "StageWorker",
    "StageCrashed",
    "StageFailed",
    "WorkerUnavailable",
    "describe_exit",
    "WITHOUT_ONEDNN",
]

# The environment of the retry after a crash: oneDNN's CPU kernels are where the crashes come from.
WITHOUT_ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "0"}


class StageCrashed(OptimizationError):
    """The process running a stage ended without answering (``code``: its exit status)."""

    def __init__(self, message: str, hint: str | None = None, code: int | None = None):
        super().__init__(message, hint)
        self.code = code


class StageFailed(OptimizationError):
    """The stage itself raised an error (the child reports it and serves on)."""


class WorkerUnavailable(OptimizationError):
    """The child could not load the model or the data (e.g. a custom layer only the parent knows)."""


def describe_exit(code: int | None) -> str:
    """How a process ended, in words: ``"signal SIGSEGV"`` or ``"exit status 3"``.

    Example:
        >>> describe_exit(-11)
        'signal SIGSEGV'
        >>> describe_exit(3)
        'exit status 3'
    """
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class StageWorker:
    """A child process that runs the stages of ``tfedge optimize`` one request at a time.

    Args:
        base: the float model's saved file; the frozen teacher every fine-tune distils from is a
            copy of it.
        train: the training data: an ``.npz`` file, an image folder or a TFRecord glob (the
            child streams it, resized to the model's input).
        val: the validation data the fine-tunes choose their best epoch on, an ``.npz`` file.
        strategy: ``None``, ``"mirrored"`` or ``"multiworker"`` (a strategy object cannot cross
            a process boundary).

    Example:
        >>> with StageWorker("base.keras", "train.npz", "val.npz") as worker:  # doctest: +SKIP
        ...     worker.run("base.keras", {"name": "prune", "sparsity": 0.8}, "pruned.keras")
    """

    def __init__(self, base, train, val, strategy: str | None = None):
        self.config = {
            "base": str(base),
            "train": str(train),
            "val": str(val),
            "strategy": strategy,
            "parent": os.getpid(),
        }
        self.process = None
        self.running = None  # the stage being run, while a request waits for its answer
        self.env = None  # extra environment of the running child
        self._replies = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, what: str = "the fine-tune process", env: dict | None = None) -> None:
        """Start the child and wait until it has loaded the model and data.

        Args:
            what: what the start is for, in messages.
            env: environment variables to set in the child (e.g. :data:`WITHOUT_ONEDNN`).

        Raises:
            WorkerUnavailable: the child could not load them (the error it met).
            StageCrashed: it died while loading them.
        """
        read_fd, write_fd = os.pipe()
        config = dict(self.config, reply_fd=write_fd)
        # The child imports what this process imports (a source checkout, a user's path).
        path = os.pathsep.join(p for p in sys.path if p)
        child_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tfedge.commands.stage_worker", json.dumps(config)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                text=True,
                env=child_env,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.env = dict(env or {})
        self._replies = os.fdopen(read_fd, "r")
        try:
            self._answer(f"{what} (starting its process)")
        except StageFailed as exc:  # a child that could not load the model ends on its own
            self._kill()
            raise WorkerUnavailable(exc.message, exc.hint) from None
        except BaseException:
            self._kill()
            raise

    def run(
        self, source, stage: dict, output, label: str | None = None, data_fraction=None
    ) -> None:
        """Run ``stage`` on the model saved at ``source`` and save the result at ``output``.

        Args:
            source: the input model's file (the ``base`` file or an earlier stage's output).
            stage: the stage, as in a recipe (``{"name": "prune", "sparsity": 0.8, ...}``).
            output: where the child saves the stage's result (written atomically).
            label: the stage's name in messages.
            data_fraction: fine-tune on this seeded fraction of the training data (the search's
                low-fidelity screen); None or 1 is all of it.

        Raises:
            StageFailed: the stage failed (its own error and hint).
            WorkerUnavailable: the child could not load the model or the data.
            StageCrashed: the child died, and died again running the stage with oneDNN off (the
                signal is named; the next call starts a new child).
        """
        what = label or stage.get("name", "stage")
        try:
            self._request(source, stage, output, what, env=None, fraction=data_fraction)
            return
        except StageCrashed as crash:
            if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" or not (crash.code or 0) < 0:
                raise  # oneDNN was off already, or the child exited (not a crash by a signal)
            echo(f"  {crash.message}: running it again with TensorFlow's oneDNN kernels off")
        try:
            self._request(source, stage, output, what, env=WITHOUT_ONEDNN, fraction=data_fraction)
        except StageCrashed as crash:
            message = f"{crash.message}; it crashed with oneDNN's kernels off too"
            raise StageCrashed(message, crash.hint, crash.code) from None
        finally:
            self.close()  # the next stage starts a child with oneDNN on again

    def _request(self, source, stage: dict, output, what: str, env, fraction=None) -> None:
        if self.process is not None and (
            self.process.poll() is not None or self.env != (env or {})
        ):
            self.close()
        if self.process is None:
            self.start(what, env)
        request = {"source": str(source), "stage": stage, "output": str(output)}
        if fraction is not None:
            request["data_fraction"] = float(fraction)
        self.running = what
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; _answer reports how it ended
        try:
            self._answer(what)
        except OptimizationError:
            raise
        except BaseException:  # interrupted while the child works: its answer would come late
            self._kill()
            raise
        finally:
            self.running = None

    def _answer(self, what: str) -> None:
        line = self._replies.readline() if self._replies is not None else ""
        if not line:
            code = self.process.wait() if self.process is not None else None
            self._forget()
            if code is not None and code < 0:
                why = (
                    "the system killed it, most likely for running out of memory"
                    if code == -signal.SIGKILL
                    else "a native crash inside TensorFlow"
                )
                raise StageCrashed(
                    f"{what}: the process running it ended with {describe_exit(code)} ({why})",
                    "the candidate is recorded as failed and the search goes on; if every "
                    "candidate fails like this, give the fine-tunes more memory (a smaller "
                    "--train) or rerun with --debug to see TensorFlow's own log",
                    code,
                )
            raise StageCrashed(
                f"{what}: the process running it exited with {describe_exit(code)} before "
                "answering",
                "its error is printed above; rerun with --debug for TensorFlow's own log",
                code,
            )
        answer = json.loads(line)
        if answer.get("exiting"):  # it ends after this answer (its memory grew): wait for that
            self.close()
        if answer.get("error"):
            raise StageFailed(f"{what}: {answer['error']}", answer.get("hint"))

    def _forget(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self._replies is not None:
            with contextlib.suppress(OSError):
                self._replies.close()
        self._replies = None
        self.process = None

    def close(self) -> None:
        """Stop the child (it finishes nothing more); safe to call twice."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._forget()

    def _kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.kill()
            self.process.wait()
        self._forget()


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the parent dies (elsewhere: stdin's end stops it)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request above
        os._exit(1)


def _error(exc: BaseException) -> dict:
    message = getattr(exc, "message", None) or first_line(exc)
    return {"error": str(message), "hint": getattr(exc, "hint", None)}


def fraction_of(train, fraction: float, folder=None, in_memory_bytes: int | None = None):
    """A seeded ``fraction`` of a training set (a data stream or a ``Dataset``).

    The search's low-fidelity screen fine-tunes on it. The same seed gives the same samples in
    every process, so a screen's stage outputs are cached and shared like full ones. A share of a
    stream that holds more than ``in_memory_bytes`` as float32 (default: the streams'
    ``IN_MEMORY_BYTES``, 64 MB) is never held whole: it is written once, batch by batch, to
    ``folder/screen-<key>.npz`` (uncompressed, memory-mapped by its reader) and streamed from
    there; a smaller share, or a ``Dataset``, is taken in memory. The samples are a seeded
    choice without replacement: for an ``.npz``, an image folder or arrays the same ones as
    ``train.sample(count, seed=0)``; for TFRecord shards or a ``tf.data`` pipeline (read in
    order), the same choice of positions in their order.

    Example:
        >>> len(fraction_of(Dataset(np.zeros((100, 4)), np.zeros(100, int)), 0.25))  # doctest: +SKIP
        25
    """
    if fraction is None or fraction >= 1:
        return train
    count = max(1, int(len(train) * float(fraction)))
    from tfedge.core import streams

    limit = streams.IN_MEMORY_BYTES if in_memory_bytes is None else int(in_memory_bytes)
    if not isinstance(train, streams.DataStream) or folder is None:
        return train.take(count, seed=0)
    per_sample = 4 * math.prod(train.input_shape) + 8
    if count * per_sample <= limit:
        return train.take(count, seed=0)
    import numpy as np

    total = len(train)
    select = np.zeros(total, bool)
    select[np.random.default_rng(0).choice(total, count, replace=False)] = True
    key = hashlib.sha256(f"{train.key()}:{total}:{count}".encode()).hexdigest()[:16]
    path = Path(folder) / f"screen-{key}.npz"
    if not path.is_file():  # another process of the same search may have written it
        streams.write_npz(path, train.picked(select), count, train.input_shape)
    return streams.stream_data(
        path,
        require_labels=train.has_labels,
        name=f"{train.name} (a {float(fraction) * 100:g} % share)",
        num_classes=train.num_classes,
        in_memory_bytes=0,  # a set that streams keeps streaming
    )


# A child whose resident memory has grown this much (768 MB) since it was ready ends after it
# answers, and the next stage gets a fresh one (about 10 s to start). TensorFlow's allocations are
# not all given back between fine-tunes: on MobileNetV1 0.25 at 96x96 one child grew by about
# 300 MB a stage, to 9.6 GB in a search of 29 candidates.
RECYCLE_GROWTH = int(os.environ.get("TFEDGE_WORKER_RECYCLE_BYTES", 768 << 20))


def _resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _release() -> None:
    """Free what one stage left behind: Keras's global state and the Python garbage (the base
    model, the teacher and the data, loaded once, stay usable)."""
    import gc

    from tfedge.core.backend import keras

    keras.backend.clear_session()
    gc.collect()


def _serve(config: dict) -> None:
    reply = os.fdopen(int(config["reply_fd"]), "w", buffering=1)

    def answer(payload: dict) -> None:
        reply.write(json.dumps(payload) + "\n")
        reply.flush()

    try:
        from tfedge.converters import input_shape_of
        from tfedge.core.loading import load_model
        from tfedge.core.streams import stream_data
        from tfedge.models.cloning import frozen_copy
        from tfedge.models.training import num_classes, resolve_strategy

        base = load_model(config["base"]).model
        teacher = frozen_copy(base)
        # An image folder or TFRecord shards are decoded and resized to the model's input here.
        shape = {"input_shape": input_shape_of(base), "num_classes": num_classes(base)}
        train = stream_data(config["train"], require_labels=True, name="--train", **shape)
        val = stream_data(config["val"], require_labels=True, name="--val", **shape)
        strategy = resolve_strategy(config["strategy"])
    except Exception as exc:  # every failure to start is reported, then the child ends
        answer(_error(exc))
        return
    answer({"ready": True})
    ready = _resident_bytes()
    subsets = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            source = request["source"]
            model = base if source == config["base"] else load_model(source).model
            fraction = request.get("data_fraction")
            if fraction is not None and fraction not in subsets:
                folder = Path(request["output"]).parent
                subsets[fraction] = fraction_of(train, fraction, folder=folder)
            used = train if fraction is None else subsets[fraction]
            result = run_stage(
                request["stage"], model, used, val, teacher=teacher, strategy=strategy
            )
            save_atomically(result, request["output"])
            del model, result
            outcome = {"ok": True}
        except Exception as exc:  # a stage's error goes back to the parent; the child serves on
            outcome = _error(exc)
        _release()
        if _resident_bytes() > ready + RECYCLE_GROWTH:
            outcome["exiting"] = True  # the parent starts a fresh child for the next stage
        answer(outcome)
        if outcome.get("exiting"):
            return


def main(argv=None) -> None:
    """The child's entry point: ``python -m tfedge.commands.stage_worker CONFIG_JSON``."""
    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    # Ctrl-C reaches the whole process group: the parent stops this child itself, and a
    # KeyboardInterrupt here would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(config["parent"]))
    _serve(config)


if __name__ == "__main__":
    main()
