"""One value for how a compression stage fine-tunes: :class:`FineTune`.

Every stage (pruning, QAT, clustering, distillation, factorization, filter pruning) fine-tunes
with the same settings; each declares its own defaults once, as the default of its ``settings``
parameter, and takes the settings as one value. The old keywords (``prune(model, train, val,
epochs=4, teacher=model)``) still work: they replace those fields of the stage's defaults.

This module imports no TensorFlow, so the recipe schema and the stage registry can read it.

Example:
    >>> settings = FineTune(epochs=4, learning_rate=2e-3)
    >>> settings.replace(epochs=2).epochs, settings.learning_rate
    (2, 0.002)
"""

import dataclasses
import inspect
from dataclasses import dataclass

from tfedge.core.errors import OptimizationError

__all__ = ["FineTune", "FINE_TUNE_KEYS", "SUPPLIED_KEYS", "with_keywords", "defaults_of"]

#: What a run supplies (a model object, a strategy object) rather than a recipe's YAML.
SUPPLIED_KEYS = ("teacher", "strategy")


@dataclass(frozen=True)
class FineTune:
    """How a stage fine-tunes: epochs, batch, learning rate, distillation and distribution.

    Attributes:
        epochs: fine-tuning epochs (None: the stage sizes them by the data, about its own
            number of optimizer steps).
        batch_size: the batch size.
        learning_rate: Adam's initial learning rate (cosine-decayed).
        temperature: the distillation temperature (with a teacher).
        alpha: the true-label weight in distillation (with a teacher; the teacher's soft loss
            gets ``1 - alpha``).
        seed: the random seed (None leaves the global seed alone).
        teacher: a model to distill from while fine-tuning (None: the labels only).
        strategy: a ``tf.distribute`` strategy (or ``"mirrored"``) to build and train under.

    A ``settings=FineTune(...)`` given to a stage replaces the stage's defaults whole; to change
    one field and keep the stage's others, pass that field as a keyword (``epochs=2``) or start
    from the stage's defaults with :func:`defaults_of`.

    Example:
        >>> from tfedge.models.pruning import prune  # doctest: +SKIP
        >>> prune(model, train, val, settings=defaults_of(prune).replace(epochs=2))  # doctest: +SKIP
    """

    epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.1
    seed: int | None = 0
    teacher: object = None
    strategy: object = None

    def replace(self, **changes) -> "FineTune":
        """A copy with ``changes`` (field names only).

        Example:
            >>> FineTune().replace(batch_size=64).batch_size
            64
        """
        _check_keys(changes, "FineTune")
        return dataclasses.replace(self, **changes)

    def fit_options(self, **overrides) -> dict:
        """The keywords of :func:`tfedge.models.training.fit`, with ``overrides`` on top.

        Example:
            >>> FineTune(epochs=3).fit_options(learning_rate=1e-4)["learning_rate"]
            0.0001
        """
        options = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**options, **overrides}


#: The fields of :class:`FineTune`, in order.
FINE_TUNE_KEYS = tuple(field.name for field in dataclasses.fields(FineTune))


def _check_keys(keywords: dict, where: str) -> None:
    unknown = [key for key in keywords if key not in FINE_TUNE_KEYS]
    if unknown:
        raise OptimizationError(
            f"{where} got the unknown keyword {unknown[0]!r}; the fine-tune settings are "
            f"{', '.join(FINE_TUNE_KEYS)}",
            "check the spelling, or give the stage's own parameters by their names",
        )


def with_keywords(settings: FineTune, keywords: dict, stage: str) -> FineTune:
    """``settings`` with the old fine-tune keywords (``epochs=4``, ``teacher=model``) on top.

    The compatibility path of every stage: ``prune(model, train, val, epochs=4)`` is
    ``prune(model, train, val, settings=<prune's defaults>.replace(epochs=4))``.

    Raises:
        OptimizationError: for a keyword that is no fine-tune setting (naming the valid ones).

    Example:
        >>> with_keywords(FineTune(), {"epochs": 2}, "prune").epochs
        2
    """
    if not isinstance(settings, FineTune):
        raise OptimizationError(
            f"{stage}: settings is {type(settings).__name__} {settings!r:.60}; expected a "
            "tfedge.models.training.FineTune",
            "pass settings=FineTune(epochs=4, ...) or the keywords themselves (epochs=4)",
        )
    _check_keys(keywords, stage)
    return dataclasses.replace(settings, **keywords) if keywords else settings


def defaults_of(function) -> FineTune:
    """A stage function's own fine-tune defaults: the default of its ``settings`` parameter.

    Example:
        >>> from tfedge.models.pruning import prune  # doctest: +SKIP
        >>> defaults_of(prune).learning_rate  # doctest: +SKIP
        0.002
    """
    parameter = inspect.signature(function).parameters.get("settings")
    if parameter is None or not isinstance(parameter.default, FineTune):
        raise OptimizationError(
            f"{getattr(function, '__qualname__', function)!r} declares no fine-tune defaults",
            "a stage function takes settings: FineTune = FineTune(...) as a keyword",
        )
    return parameter.default
