"""The stage registry: every compression stage declared once, read by everything that runs stages.

A :class:`Stage` names its function lazily (module and function as text: the registry imports no
stage module, so no stage module's import of TensorFlow happens before a stage runs, and a stage
module may import this one without a loop) and says:

- its place in the order stages run in when given as flags (``order``);
- what it gives the model that later stages keep (``makes``: ``"zeros"``, ``"shared values"``),
  whether it rebuilds the model so that nothing of the earlier stages' is left (``rebuilds``), and
  how it keeps what earlier stages made (``keep_earlier``: the parameters it then gets);
- its search space, how a point of it becomes the stage's parameters, and its relative cost in
  fine-tuning runs (``space``, ``subspace``, ``from_choice``, ``cost``; :func:`search_space`,
  :func:`stages_from_choices`, :func:`costs`);
- the recipe rules that are its own (``choices``: a parameter's valid values, listed in its
  module; ``ranges``: a parameter's numeric range).

``tfedge optimize`` (the flag order, :func:`run_stage`, :func:`code_key`), the recipe schema
(:mod:`tfedge.models.recipe`), the compression report and the search read it. A new stage is its
own module with its function (which takes ``settings: FineTune = FineTune(...)`` and the stage's
own keyword parameters) plus one :func:`register` call here.

Example:
    >>> names()
    ('distill', 'factorize', 'prune_filters', 'prune', 'cluster', 'qat')
    >>> get("prune").makes, get("prune_filters").rebuilds
    (frozenset({'zeros'}), True)
"""

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tfedge.core.errors import OptimizationError
from tfedge.core.files import save_atomically
from tfedge.models.fine_tune import FINE_TUNE_KEYS, SUPPLIED_KEYS, defaults_of, with_keywords
from tfedge.version import __version__

__all__ = [
    "Stage",
    "register",
    "get",
    "names",
    "registered",
    "search_space",
    "costs",
    "stages_from_choices",
    "parameters",
    "preserving",
    "run_stage",
    "code_key",
    "save_atomically",
    "ZEROS",
    "SHARED_VALUES",
]

ZEROS = "zeros"
SHARED_VALUES = "shared values"


@dataclass(frozen=True)
class Stage:
    """One compression stage, as the registry knows it.

    Attributes:
        name: the stage's name in recipes, flags and reports (``"prune"``).
        module: the module holding its function (``"tfedge.models.pruning"``).
        function: the function's name there. It is called as ``function(model, train, val, *,
            settings=FineTune(...), **params)`` and returns a trained tf_keras model to convert.
        order: its place in the order stages run in when given as flags (lower first).
        makes: what it gives the model that later stages keep (:data:`ZEROS`,
            :data:`SHARED_VALUES`).
        rebuilds: it makes a new architecture (a student, factorized or thinner layers): what
            the earlier stages made is gone.
        annotates: it returns the model wrapped (QAT's fake-quant wrappers): its kernels are
            read from the model it started from.
        keep_earlier: ``(made) -> params``: the parameters that keep what the earlier stages
            ``made`` (a set of :attr:`makes` values), or None.
        space: the search's choices for the stage (``"none"`` or ``False`` leaves it out).
        subspace: further search choices that apply only with the stage (``{"criterion": ...}``).
        from_choice: ``(value, choices) -> params``: the stage's parameters for the search's
            choice ``value`` (``choices``: the whole point, for its ``subspace``), or None.
        cost: its rough cost in fine-tuning runs (the search orders its seeds by it).
        choices: ``{parameter: (attribute, *extra values)}``: the valid values of a parameter,
            listed under ``attribute`` in the stage's module.
        ranges: ``{parameter: {"low", "high", "low_open", "high_open", "none"}}``: a numeric
            range of the stage's own (where the same name means something else elsewhere).
    """

    name: str
    module: str
    function: str
    order: int
    makes: frozenset = frozenset()
    rebuilds: bool = False
    annotates: bool = False
    keep_earlier: Callable | None = None
    space: tuple = ()
    subspace: dict = field(default_factory=dict)
    from_choice: Callable | None = None
    cost: float = 1.0
    choices: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)

    def load(self):
        """Import the stage's module and return its function.

        Raises:
            OptimizationError: the module cannot be imported (a missing optional dependency).
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise OptimizationError(f"stage {self.name!r} is not available: {exc}") from exc
        return getattr(module, self.function)

    def choice_values(self, parameter: str) -> tuple | None:
        """The valid values of ``parameter`` when the stage lists them (None: no list)."""
        if parameter not in self.choices:
            return None
        attribute, *extra = self.choices[parameter]
        return (*getattr(importlib.import_module(self.module), attribute), *extra)


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (kept sorted by ``order``); return it.

    Raises:
        OptimizationError: a stage of that name, or at that place in the order, is registered.

    Example:
        >>> register(Stage("sharpen", "my.module", "sharpen", order=35))  # doctest: +SKIP
    """
    taken = [s.name for s in _REGISTRY.values() if s.order == stage.order]
    if stage.name in _REGISTRY or taken:
        raise OptimizationError(
            f"stage {stage.name!r} (order {stage.order}) clashes with the registered "
            f"{stage.name if stage.name in _REGISTRY else taken[0]!r}",
            f"give it a name and an order of its own; registered: {', '.join(_REGISTRY)}",
        )
    _REGISTRY[stage.name] = stage
    ordered = sorted(_REGISTRY.values(), key=lambda s: s.order)
    _REGISTRY.clear()
    _REGISTRY.update((s.name, s) for s in ordered)
    parameters.cache_clear()
    return stage


def get(name: str) -> Stage:
    """The registered stage ``name``.

    Raises:
        OptimizationError: no stage has that name (the valid ones are listed).

    Example:
        >>> get("qat").function
        'quantize_aware'
    """
    stage = _REGISTRY.get(name) if isinstance(name, str) else None
    if stage is None:
        raise OptimizationError(
            f"unknown stage {name!r}; valid stages are {', '.join(_REGISTRY)}",
            "write a stage as {name: prune, sparsity: 0.8} with one of those names",
        )
    return stage


def names() -> tuple:
    """The registered stage names, in the order stages run in."""
    return tuple(_REGISTRY)


def registered() -> tuple:
    """The registered :class:`Stage` objects, in order."""
    return tuple(_REGISTRY.values())


def search_space() -> dict:
    """``{stage or sub-choice: [choices]}``, in the order stages run in (the search's space).

    Example:
        >>> list(search_space())[:4]
        ['distill', 'factorize', 'prune_filters', 'criterion']
    """
    space = {}
    for stage in _REGISTRY.values():
        if stage.space:
            space[stage.name] = list(stage.space)
            space.update({key: list(values) for key, values in stage.subspace.items()})
    return space


def costs() -> dict:
    """``{stage: rough cost in fine-tuning runs}``.

    Example:
        >>> costs()["distill"] > costs()["qat"]
        True
    """
    return {stage.name: stage.cost for stage in _REGISTRY.values()}


def stages_from_choices(choices: dict, epochs: int | None = None) -> list[dict]:
    """One point of :func:`search_space` as a stage list, in order, each keeping the earlier work.

    A stage is left out when its choice is missing, ``"none"`` or false.

    Example:
        >>> stages_from_choices({"prune": "2:4", "qat": True})
        [{'name': 'prune', 'sparsity': 0.5, 'structure': '2:4'}, {'name': 'qat', 'preserve': 'sparsity'}]
    """
    out = []
    for stage in _REGISTRY.values():
        value = choices.get(stage.name, "none")
        if stage.from_choice is None or value is False or value is None or value == "none":
            continue
        out.append({"name": stage.name, **stage.from_choice(value, choices)})
    if epochs is not None:
        out = [{**stage, "epochs": int(epochs)} for stage in out]
    return preserving(out)


@cache
def parameters(name: str) -> dict:
    """The parameters a recipe may give stage ``name``, with their defaults.

    They are the stage function's keyword parameters and the fields of its fine-tune
    settings (with the stage's own defaults), less what a run supplies (the teacher, the
    strategy).

    Example:
        >>> parameters("prune")["sparsity"], parameters("prune")["learning_rate"]  # doctest: +SKIP
        (0.8, 0.002)
    """
    function = get(name).load()
    signature = inspect.signature(function)
    own = {
        key: param.default
        for key, param in signature.parameters.items()
        if param.kind is param.KEYWORD_ONLY and key != "settings" and key not in SUPPLIED_KEYS
    }
    defaults = defaults_of(function)
    tuning = {key: getattr(defaults, key) for key in FINE_TUNE_KEYS if key not in SUPPLIED_KEYS}
    return {**tuning, **own}


def preserving(stages: list[dict]) -> list[dict]:
    """Each stage with the parameters that keep what the earlier stages made.

    Clustering after pruning keeps the zeros; QAT keeps the zeros and shared values; a stage
    that rebuilds the model starts afresh. A parameter the stage sets itself is kept.

    Example:
        >>> preserving([{"name": "prune"}, {"name": "cluster"}, {"name": "qat"}])[2]
        {'name': 'qat', 'preserve': 'sparsity+clusters'}
    """
    made = set()
    out = []
    for stage in stages:
        stage = dict(stage)
        entry = get(stage["name"])
        if entry.rebuilds:
            made = set()
        if entry.keep_earlier is not None and made:
            for key, value in entry.keep_earlier(made).items():
                stage.setdefault(key, value)
        made |= entry.makes
        out.append(stage)
    return out


def run_stage(stage: dict, model, train, val, *, teacher=None, strategy=None):
    """Run one recipe stage (``{"name": "prune", "sparsity": 0.8, ...}``) on ``model``.

    The stage's fine-tune keys (``epochs``, ``batch_size``, ...) go into its
    :class:`~tfedge.models.fine_tune.FineTune` settings over the stage's own defaults; the rest
    are the stage's parameters.

    Example:
        >>> pruned = run_stage({"name": "prune", "sparsity": 0.8}, model, train, val)  # doctest: +SKIP
    """
    entry = get(stage["name"])
    function = entry.load()
    params = {k: v for k, v in stage.items() if k != "name"}
    tuning = {k: params.pop(k) for k in FINE_TUNE_KEYS if k in params}
    settings = with_keywords(
        defaults_of(function), {**tuning, "teacher": teacher, "strategy": strategy}, entry.name
    )
    return function(model, train, val, settings=settings, **params)


def _sources(module) -> list[Path]:
    path = Path(module.__file__)
    if path.name == "__init__.py":  # a stage that is a package: all its modules
        return sorted(path.parent.rglob("*.py"))
    return [path]


def code_key(stages) -> str:
    """A digest of tfedge's version and the source of every stage module ``stages`` use.

    Stage checkpoints and the search's stage cache are keyed by it, so new stage code retrains.

    Example:
        >>> len(code_key([{"name": "qat"}]))
        16
    """

    digest = hashlib.sha256(__version__.encode())
    for stage in stages:
        module = importlib.import_module(get(stage["name"]).module)
        for path in _sources(module):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cluster_keeps(made: set) -> dict:
    return {"preserve_sparsity": True} if ZEROS in made else {}


def _qat_keeps(made: set) -> dict:
    kept = [
        word for word, what in (("sparsity", ZEROS), ("clusters", SHARED_VALUES)) if what in made
    ]
    return {"preserve": "+".join(kept)} if kept else {}


# The stages, in the order they run in when given as flags: a distilled student first, then
# factorization and filter pruning (which change the architecture), then magnitude pruning,
# clustering (keeping the zeros) and QAT last (keeping zeros and shared values). ``space`` and
# ``cost`` are the search's.
register(
    Stage(
        "distill",
        "tfedge.models.distillation",
        "distill",
        order=10,
        rebuilds=True,
        space=("none", 0.5, 0.25),  # a fresh student with this fraction of the parameters
        from_choice=lambda value, _: {"new_student": True, "params": value},
        cost=3.0,
    )
)
register(
    Stage(
        "factorize",
        "tfedge.models.factorization",
        "factorize",
        order=20,
        rebuilds=True,
        space=("none", 0.95, 0.9),  # low-rank factorization keeping this energy
        from_choice=lambda value, _: {"energy": value},
        cost=1.5,
        ranges={"ratio": {"low": 0, "high": 1, "low_open": True, "none": True}},
    )
)
register(
    Stage(
        "prune_filters",
        "tfedge.models.filter_pruning",
        "prune_filters",
        order=30,
        rebuilds=True,
        space=("none", 0.25, 0.5, 0.75),  # fraction of conv filters removed
        subspace={"criterion": ("l1", "l2", "taylor")},  # the ranking (only with the stage)
        from_choice=lambda value, choices: {
            "ratio": value,
            "criterion": choices.get("criterion", "l1"),
        },
        cost=2.0,
        choices={"criterion": ("CRITERIA",)},
        ranges={"ratio": {"low": 0, "high": 1, "low_open": True, "high_open": True}},
    )
)
register(
    Stage(
        "prune",
        "tfedge.models.pruning",
        "prune",
        order=40,
        makes=frozenset({ZEROS}),
        space=("none", 0.5, 0.7, 0.8, 0.9, "2:4"),  # magnitude pruning sparsity, or 2:4
        from_choice=lambda value, _: (
            {"sparsity": 0.5, "structure": "2:4"} if value == "2:4" else {"sparsity": value}
        ),
        cost=2.0,
        choices={"schedule": ("SCHEDULES",)},
    )
)
register(
    Stage(
        "cluster",
        "tfedge.models.clustering",
        "cluster",
        order=50,
        makes=frozenset({SHARED_VALUES}),
        keep_earlier=_cluster_keeps,
        space=("none", 32, 16, 8),  # shared weight values per layer
        from_choice=lambda value, _: {"clusters": int(value)},
        cost=1.5,
        choices={"init": ("INITS",)},
    )
)
register(
    Stage(
        "qat",
        "tfedge.models.qat",
        "quantize_aware",
        order=60,
        annotates=True,
        keep_earlier=_qat_keeps,
        space=(False, True),
        from_choice=lambda value, _: {},
        cost=1.0,
        choices={"preserve": ("PRESERVE", "clusters+sparsity")},
    )
)
