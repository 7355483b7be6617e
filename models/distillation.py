"""Knowledge distillation: train a (smaller or compressed) student to match a teacher.

The loss is Hinton's: the KL divergence between the teacher's and the student's
temperature-softened outputs, times ``T**2``, weighted ``1 - alpha``, plus ``alpha`` times the
cross-entropy with the true labels. Teachers and students may output probabilities (a softmax at
the end) or logits; probabilities are turned into log-probabilities, which soften the same way.

Example:
    >>> from tfedge.models.distillation import distill, make_student
    >>> student = make_student(teacher, params=0.5)  # doctest: +SKIP
    >>> student = distill(student, train, val, teacher=teacher)  # doctest: +SKIP
"""

import copy

import tfedge.models.cloning as cloning
import tfedge.models.training as training
from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import rename_layer
from tfedge.models.distiller import Distiller, ends_in_softmax
from tfedge.models.rebuild import to_keras2

__all__ = [
    "Distiller",
    "distill",
    "make_student",
    "half_width_student",
    "ends_in_softmax",
    "DEFAULT_STEPS",
    "FINE_TUNE",
]

DEFAULT_STEPS = 1300
#: How :func:`distill` trains by default (Hinton's temperature 4, most weight on the teacher).
FINE_TUNE = training.FineTune(learning_rate=2e-3, temperature=4.0, alpha=0.1)
_WIDTH_KEYS = {
    "Conv1D": "filters",
    "Conv2D": "filters",
    "Conv3D": "filters",
    "Conv2DTranspose": "filters",
    "SeparableConv1D": "filters",
    "SeparableConv2D": "filters",
    "Dense": "units",
    "LSTM": "units",
    "GRU": "units",
    "SimpleRNN": "units",
}


def distill(
    model,
    train,
    val,
    *,
    settings: training.FineTune = FINE_TUNE,
    params: float = 0.5,
    width: float | None = None,
    new_student: bool = False,
    desc: str = "distilling",
    **fine_tune,
):
    """Train the student ``model`` from ``teacher`` and the labels; return the trained student.

    The student may be untrained (e.g. from :func:`make_student`) or a trained model to refine.
    When ``model`` is the teacher itself (``tfedge optimize --distill`` passes the float model as
    both), a fresh student is made first with :func:`make_student` (``params``, ``width``).
    Teacher and student may output probabilities or logits (detected on the data).

    Args:
        model: the student, a tf_keras classifier with the teacher's inputs and classes.
        train: training :class:`~tfedge.core.data.Dataset` with labels.
        val: validation :class:`~tfedge.core.data.Dataset`; the best epoch on it is kept.
        settings: how it trains (:class:`~tfedge.models.training.FineTune`, default
            :data:`FINE_TUNE`): its ``teacher`` is the trained model to learn from (required),
            ``temperature`` the softening temperature, ``alpha`` the weight of the true-label
            loss; ``epochs`` None: about 1300 optimizer steps, at least 10 epochs.
        params: the student's parameter fraction, when the student is made here.
        width: the student's width factor, when the student is made here (overrides ``params``).
        new_student: make a fresh student of ``teacher``'s architecture (``params``/``width``)
            instead of training ``model`` (what ``tfedge optimize --distill`` asks for).
        desc: the progress bar's label.
        **fine_tune: fields of ``settings`` as keywords (``teacher=model``, ``epochs=10``): they
            replace those fields.

    Returns:
        The trained student (``model`` itself unless a student was made), ready to convert.

    Raises:
        OptimizationError: without a teacher, or when teacher and student disagree on shapes.

    Example:
        >>> student = distill(make_student(teacher), train, val, teacher=teacher)  # doctest: +SKIP
    """
    settings = training.with_keywords(settings, fine_tune, "distill")
    teacher = settings.teacher
    if teacher is None:
        raise OptimizationError(
            "distillation needs a teacher model, got teacher=None",
            "pass teacher=<the trained float model>, e.g. distill(student, train, val, teacher=model)",
        )
    same = model is teacher or new_student
    teacher = to_keras2(teacher)
    model = teacher if same else to_keras2(model)
    if same:
        if settings.seed is not None:
            keras.utils.set_random_seed(settings.seed)
        model = make_student(teacher, width=width, params=params, strategy=settings.strategy)
    if tuple(teacher.output_shape) != tuple(model.output_shape) or tuple(
        teacher.input_shape
    ) != tuple(model.input_shape):
        raise OptimizationError(
            f"student {model.name!r} maps {model.input_shape} -> {model.output_shape} but teacher "
            f"{teacher.name!r} maps {teacher.input_shape} -> {teacher.output_shape}",
            "the student needs the teacher's input shape and number of classes",
        )
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, settings.batch_size, minimum=10)
    training.fit(
        model, train, val, **settings.fit_options(epochs=epochs, teacher=teacher), desc=desc
    )
    return model


def _widen(config: dict, width: float, keep: set) -> dict:
    config = copy.deepcopy(config)
    for layer in config["layers"]:
        if "trainable" in layer["config"]:  # a fresh student trains, even if the teacher is frozen
            layer["config"]["trainable"] = True
        key = _WIDTH_KEYS.get(layer["class_name"])
        if key is None or layer["config"]["name"] in keep:
            continue
        old = int(layer["config"][key])
        layer["config"][key] = max(1, int(round(old * width)))
    return config


def make_student(
    model, *, width: float | None = None, params: float = 0.5, strategy=None
) -> keras.Model:
    """A fresh, untrained copy of ``model``'s architecture with fewer filters and units.

    Every Conv/Dense/RNN layer is narrowed by the same factor, except the output layers (the
    classes stay). With ``width`` the factor is given; otherwise it is the widest factor whose
    parameter count is at most ``params`` times the model's.

    Args:
        model: a functional or Sequential tf_keras model (nested models are flattened).
        width: the width factor (0 < width <= 1), or None to choose it from ``params``.
        params: the wanted parameter fraction when ``width`` is None.
        strategy: a ``tf.distribute`` strategy to build the student under, or None.

    Returns:
        The untrained student.

    Raises:
        OptimizationError: for bad factors, or a model that cannot be rebuilt narrower.

    Example:
        >>> student = make_student(teacher, params=0.5)  # doctest: +SKIP
        >>> student.count_params() <= 0.5 * teacher.count_params()  # doctest: +SKIP
        True
    """
    flat = cloning.flatten_model(model)
    if isinstance(flat, keras.Sequential):
        flat = cloning.flatten_model(keras.Model(flat.inputs, flat.outputs, name=flat.name))
    config = flat.get_config()
    keep = {name for name, _, _ in config["output_layers"]}
    if width is not None:
        if not 0.0 < width <= 1.0:
            raise OptimizationError(
                f"width {width} must be in (0, 1]", "use e.g. 0.5 for half the filters and units"
            )
        return _build(config, width, keep, flat, strategy)
    if not 0.0 < params <= 1.0:
        raise OptimizationError(
            f"params {params} must be in (0, 1]",
            "use e.g. 0.5 for a student with half the parameters",
        )
    target = params * flat.count_params()
    low, high = 0.01, 1.0
    best = None
    for _ in range(14):
        middle = (low + high) / 2
        count = _build(config, middle, keep, flat, None).count_params()
        if count <= target:
            low, best = middle, middle
        else:
            high = middle
    if best is None:
        raise OptimizationError(
            f"no narrower copy of {flat.name!r} has at most {params:.0%} of its parameters",
            "most parameters are in layers that cannot be narrowed; pass a smaller model",
        )
    return _build(config, best, keep, flat, strategy)


def half_width_student(model, strategy=None) -> keras.Model:
    """A fresh student with half the filters and units of every hidden layer.

    Example:
        >>> half_width_student(teacher).count_params() < teacher.count_params()  # doctest: +SKIP
        True
    """
    return make_student(model, width=0.5, strategy=strategy)


def _build(config, width, keep, original, strategy):
    widened = _widen(config, width, keep)
    try:
        with training.strategy_scope(strategy):
            student = keras.Model.from_config(widened)
    except Exception as exc:
        raise OptimizationError(
            f"cannot rebuild {original.name!r} with {width:.2f}x the filters and units: "
            f"{first_line(exc)}",
            "layers with fixed shapes (Reshape, residual Adds with the input) may need the "
            "student built by hand",
        ) from exc
    rename_layer(student, f"{original.name}_student")
    return student
