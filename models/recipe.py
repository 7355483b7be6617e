"""The recipe schema: what a ``tfedge optimize --recipe`` file may say, checked before any work.

A recipe is a YAML mapping with these keys (``stages`` alone is required)::

    model: resnet8                 # what it was written for (optimize uses its MODEL argument)
    train: {epochs: 4, batch_size: 64, learning_rate: 0.001}   # every stage's fine-tune
    stages:
      - {name: prune, sparsity: 0.8}
      - {name: qat, epochs: 2}    # a stage's own keys win over ``train``
    convert: {mode: int8, io: int8, weights: int8, int16: [conv2], keep_float: []}

``model`` is a name, or a mapping ``{name, epochs, batch_size, learning_rate}``: the zoo trains
its reference models from scratch with those settings (``optimize`` does not use them).
``train`` gives every stage's ``epochs``, ``batch_size`` and ``learning_rate`` unless the stage
sets its own (``--epochs`` on the command line wins over both). Each stage's parameters are its
function's keyword arguments, each checked for type and range; an unknown key anywhere is an
error that lists the valid ones. ``convert`` is what every stage's int8 model is converted with.

Example:
    >>> recipe = validate_recipe({"stages": [{"name": "prune", "sparsity": 0.8}, "qat"]})
    >>> [stage["name"] for stage in recipe["stages"]], recipe["stages"][1]["preserve"]
    (['prune', 'qat'], 'sparsity')
"""

import math

import tfedge.models.stages as registry
from tfedge.core.errors import OptimizationError
from tfedge.core.yaml_input import read_yaml
from tfedge.models.pruning import parse_structure

__all__ = [
    "STAGES",
    "STAGE_ORDER",
    "RECIPE_KEYS",
    "TRAIN_KEYS",
    "CONVERT_KEYS",
    "load_recipe",
    "validate_recipe",
    "stage_parameters",
    "with_preservation",
    "with_training",
]

# stage name -> (module, function), in the order stages run in when given as flags: a view of the
# stage registry (:mod:`tfedge.models.stages`) for the callers that read these names.
STAGES = {stage.name: (stage.module, stage.function) for stage in registry.registered()}
STAGE_ORDER = registry.names()
RECIPE_KEYS = ("model", "train", "stages", "convert")
TRAIN_KEYS = ("epochs", "batch_size", "learning_rate")
CONVERT_KEYS = ("mode", "io", "weights", "int16", "keep_float")
MODES = ("int8", "int16x8", "float16", "dynamic", "float32")
IO_TYPES = ("int8", "uint8", "float32")
WEIGHTS = ("int8", "int4")
_LIMIT = 60  # characters of a user's value quoted in a message

RECIPE_HINT = (
    "a recipe is YAML like 'stages: [{name: prune, sparsity: 0.8}, {name: qat}]', with stage "
    f"names {', '.join(STAGES)} and optional sections {', '.join(RECIPE_KEYS[:2])}, "
    f"{RECIPE_KEYS[3]}"
)


def _quote(value) -> str:
    text = repr(value)
    return text if len(text) <= _LIMIT else text[: _LIMIT - 3] + "..."


def _number(low, high, *, integer=False, low_open=False, high_open=False, none=False):
    """A rule for a number in ``[low, high]`` (either end open), ``None`` allowed if ``none``."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    kind = "an integer" if integer else "a number"
    wording = f"{kind} in {left}{low:g}, {'inf' if math.isinf(high) else f'{high:g}'}{right}"
    if none:
        wording += " or null"

    def check(value):
        if value is None:
            return none
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if integer and not (isinstance(value, int) or float(value).is_integer()):
            return False
        if not math.isfinite(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return check, wording


def _choice(*choices):
    return (lambda value: value in choices), "one of " + ", ".join(
        "null" if c is None else str(c) for c in choices
    )


def _names():
    def check(value):
        if isinstance(value, str):
            return True
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    return check, "a layer name or a list of layer names"


def _structure():
    def check(value):
        if value is None:
            return True

        try:
            parse_structure(value)
        except OptimizationError:
            return False
        return True

    return check, "an 'M:N' pattern such as '2:4', a block 'HxW' such as '1x4', or null"


def _kind(kind, wording):
    return (lambda value: isinstance(value, kind) and not (kind is int and value is True)), wording


_FRACTION = _number(0, 1, low_open=True, high_open=True)
_RULES = {
    "epochs": _number(1, 1000, integer=True, none=True),
    "batch_size": _number(1, 65536, integer=True),
    "learning_rate": _number(0, 10, low_open=True),
    "sparsity": _FRACTION,
    "energy": _number(0, 1, low_open=True, none=True),
    "rank": _number(1, 1_000_000, integer=True, none=True),
    "clusters": _number(2, 256, integer=True),
    "temperature": _number(0, 100, low_open=True),
    "alpha": _number(0, 1),
    "params": _number(0, 1, low_open=True),
    "width": _number(0, 1, low_open=True, none=True),
    "ramp": _number(0, 1, low_open=True),
    "frequency": _number(1, 1_000_000, integer=True, none=True),
    "polish_epochs": _number(0, 1000, integer=True, none=True),
    "min_filters": _number(1, 1_000_000, integer=True),
    "round_to": _number(1, 1024, integer=True),
    "taylor_batches": _number(1, 100_000, integer=True),
    "seed": _number(0, 2**32 - 1, integer=True, none=True),
    "skip": _names(),
    "structure": _structure(),
    "new_student": _kind(bool, "true or false"),
    "preserve_sparsity": _kind(bool, "true or false"),
    "per_channel": _kind(bool, "true or false"),
    "dense": _choice(None, True, False),
    "desc": _kind(str, "text"),
}


def _stage_rule(stage: str, key: str):
    """A rule the stage declares itself (a listed choice, its own range), or None."""
    if stage not in registry.names():
        return None
    entry = registry.get(stage)
    if key in entry.ranges:
        return _number(**entry.ranges[key])
    values = entry.choice_values(key)
    return None if values is None else _choice(*values)


def stage_parameters(name: str) -> dict:
    """The parameters a recipe may give stage ``name``, with their defaults.

    Example:
        >>> stage_parameters("prune")["sparsity"]
        0.8
    """
    return registry.parameters(name)


def _rule(stage: str, key: str, default):
    rule = _stage_rule(stage, key) or _RULES.get(key)
    if rule is not None:
        return rule
    # A parameter without a rule of its own takes its default's type.
    if isinstance(default, bool):
        return _kind(bool, "true or false")
    if isinstance(default, (int, float)):
        return _number(-math.inf, math.inf, none=False)
    if isinstance(default, str):
        return _kind(str, "text")
    return (lambda value: True), "any value"


def _refuse(where: str, message: str, hint: str = RECIPE_HINT):
    raise OptimizationError(f"{where}: {message}", hint)


def _mapping(value, where: str, keys) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _refuse(where, f"expected a mapping of {', '.join(keys)}; got {_quote(value)}")
    unknown = [key for key in value if key not in keys]
    if unknown:
        _refuse(where, f"unknown key {_quote(unknown[0])}; valid keys are {', '.join(keys)}")
    return dict(value)


def _check_values(values: dict, where: str, stage: str = "") -> None:
    for key, value in values.items():
        check, wording = _rule(stage, key, None)
        if not check(value):
            _refuse(where, f"{key} is {_quote(value)}; expected {wording}")


def _stage(item, where: str) -> dict:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        _refuse(where, f"expected a stage name or a mapping with 'name'; got {_quote(item)}")
    name = item.get("name")
    if not isinstance(name, str) or name not in registry.names():
        _refuse(
            where,
            f"unknown stage {_quote(name)}; valid stages are {', '.join(registry.names())}",
        )
    where = f"{where} ({name})"
    allowed = stage_parameters(name)
    params = {key: value for key, value in item.items() if key != "name"}
    unknown = [key for key in params if key not in allowed]
    if unknown:
        _refuse(
            where,
            f"unknown parameter {_quote(unknown[0])}; {name} takes {', '.join(sorted(allowed))}",
            f"write the stage as {{name: {name}, <parameter>: <value>}} with those parameters",
        )
    for key, value in params.items():
        check, wording = _rule(name, key, allowed[key])
        if not check(value):
            _refuse(where, f"{key} is {_quote(value)}; expected {wording}")
    return {"name": name, **params}


def _model(value, where: str):
    if value is None or isinstance(value, str):
        return value
    settings = _mapping(value, where, ("name", *TRAIN_KEYS))
    if not isinstance(settings.get("name"), str):
        _refuse(where, f"needs a 'name' (a zoo model or a file name); got {_quote(value)}")
    _check_values({k: v for k, v in settings.items() if k != "name"}, where)
    return settings


def _convert(value, where: str) -> dict:
    options = _mapping(value, where, CONVERT_KEYS)
    rules = {
        "mode": _choice(*MODES),
        "io": _choice(*IO_TYPES),
        "weights": _choice(*WEIGHTS),
        "int16": _names(),
        "keep_float": _names(),
    }
    for key, option in options.items():
        check, wording = rules[key]
        if not check(option):
            _refuse(f"{where}.{key}", f"{_quote(option)}; expected {wording}")
        if key in ("int16", "keep_float") and isinstance(option, str):
            options[key] = [option]
    return options


def validate_recipe(data, source: str = "recipe") -> dict:
    """Check a parsed recipe against the schema and return it normalized.

    Stages given as bare names become mappings, clustering after pruning keeps its sparsity and
    QAT keeps what earlier stages made (:func:`with_preservation`), and ``train`` is applied to
    every stage (:func:`with_training`).

    Args:
        data: the parsed YAML (a mapping).
        source: what to call the recipe in messages (its path).

    Returns:
        ``{"model": ..., "train": {...}, "stages": [...], "convert": {...}}``.

    Raises:
        OptimizationError: naming the first key or value that is not valid and the valid ones.

    Example:
        >>> validate_recipe({"stages": [{"name": "prune", "sparsty": 0.8}]})
        Traceback (most recent call last):
        ...
        tfedge.core.errors.OptimizationError: recipe stages[0] (prune): unknown parameter 'sparsty'; ...
    """
    if not isinstance(data, dict):
        _refuse(source, f"expected a mapping with a list of stages; got {_quote(data)}")
    unknown = [key for key in data if key not in RECIPE_KEYS]
    if unknown:
        _refuse(
            source, f"unknown key {_quote(unknown[0])}; valid keys are {', '.join(RECIPE_KEYS)}"
        )
    # ``stages: []`` is post-training int8 alone (what ``optimize --auto`` may find best).
    if not isinstance(data.get("stages"), list):
        _refuse(source, f"stages must be a list of stages; got {_quote(data.get('stages'))}")
    train = _mapping(data.get("train"), f"{source} train", TRAIN_KEYS)
    _check_values(train, f"{source} train")
    stages = [_stage(item, f"{source} stages[{i}]") for i, item in enumerate(data["stages"])]
    return {
        "model": _model(data.get("model"), f"{source} model"),
        "train": train,
        "stages": with_training(with_preservation(stages), train),
        "convert": _convert(data.get("convert"), f"{source} convert"),
    }


def load_recipe(path) -> dict:
    """Read a YAML recipe file and check it against the schema (:func:`validate_recipe`).

    Raises:
        OptimizationError: the file is missing, too large, not valid YAML (aliases are refused),
            or not a valid recipe.

    Example:
        >>> load_recipe("models/recipes/resnet8.yaml")["stages"][0]["name"]  # doctest: +SKIP
        'prune_filters'
    """
    return validate_recipe(read_yaml(path, "recipe", OptimizationError, RECIPE_HINT), str(path))


def with_preservation(stages: list[dict]) -> list[dict]:
    """Make clustering keep earlier sparsity, and QAT keep earlier sparsity and clusters.

    What each stage keeps is declared in the stage registry (:func:`tfedge.models.stages.preserving`);
    a stage that rebuilds the model (a student, factorization, filter pruning) starts afresh.

    Example:
        >>> with_preservation([{"name": "prune"}, {"name": "qat"}])[1]
        {'name': 'qat', 'preserve': 'sparsity'}
    """
    return registry.preserving(stages)


def with_training(stages: list[dict], train: dict) -> list[dict]:
    """Give every stage the recipe's ``train`` settings it does not set itself.

    Example:
        >>> with_training([{"name": "qat", "epochs": 2}], {"epochs": 5, "batch_size": 64})
        [{'name': 'qat', 'epochs': 2, 'batch_size': 64}]
    """
    return [{**stage, **{k: v for k, v in train.items() if k not in stage}} for stage in stages]
