"""Which ``tf.distribute`` strategy fine-tuning runs under: none, mirrored, or multiworker.

A strategy is given as None, a name (``"default"``, ``"mirrored"``, ``"multiworker"`` from
``TF_CONFIG``) or a ``tf.distribute.Strategy``; :func:`strategy_scope` is the scope everything is
built, compiled and fitted under.

Example:
    >>> from tfedge.models.strategies import resolve_strategy, strategy_scope, worker_count
    >>> worker_count(resolve_strategy(None))
    1
"""

import contextlib
import json
import os

from tfedge.core.backend import tf
from tfedge.core.errors import OptimizationError

__all__ = ["resolve_strategy", "worker_count", "strategy_scope"]


def resolve_strategy(strategy):
    """Turn ``None``, ``"default"``, ``"mirrored"``, ``"multiworker"`` (from ``TF_CONFIG``) or a strategy into a strategy or None.

    Example:
        >>> resolve_strategy(None) is None
        True
    """
    if strategy is None or isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if isinstance(strategy, str):
        name = strategy.strip().lower()
        if name in ("", "none", "default"):
            return None
        if name == "mirrored":
            return tf.distribute.MirroredStrategy()
        if name == "multiworker":
            return _multiworker()
    raise OptimizationError(
        f"strategy {strategy!r} is not a tf.distribute strategy; expected None, 'default', "
        "'mirrored', 'multiworker' or a tf.distribute.Strategy instance",
        "pass strategy=tf.distribute.MirroredStrategy() (all local GPUs) or leave it out",
    )


def _multiworker():
    """MultiWorkerMirroredStrategy from the standard ``TF_CONFIG`` (cluster and this task)."""

    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "null")
        workers = config["cluster"]["worker"]
        task = config["task"]
    except (ValueError, TypeError, KeyError) as exc:
        raise OptimizationError(
            f"multiworker needs TF_CONFIG with cluster.worker and task; got "
            f"{os.environ.get('TF_CONFIG')!r} ({type(exc).__name__})",
            'set TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}\' on each machine (its own index)',
        ) from None
    if not isinstance(workers, list) or not workers or task.get("type") not in ("worker", "chief"):
        raise OptimizationError(
            f"TF_CONFIG lists workers {workers!r} and task {task!r}: expected a list of "
            "host:port and a worker task",
            'e.g. {"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 0}}',
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise OptimizationError(
            f"cannot start MultiWorkerMirroredStrategy: {exc}",
            "create it before anything runs TensorFlow: call resolve_strategy('multiworker') "
            "first in the program (the command line does)",
        ) from None


def worker_count(strategy) -> int:
    """The machines that train together: a MultiWorkerMirroredStrategy's workers, else 1.

    Example:
        >>> worker_count(None)
        1
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, len(jobs.get("chief", [])) + len(jobs.get("worker", [])))


def strategy_scope(strategy):
    """``strategy.scope()``, or a do-nothing context when ``strategy`` is None.

    Example:
        >>> with strategy_scope(None):
        ...     pass
    """
    strategy = resolve_strategy(strategy)
    return contextlib.nullcontext() if strategy is None else strategy.scope()
