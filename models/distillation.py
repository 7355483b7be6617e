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

from tfedge.backend import keras, tf
from tfedge.errors import OptimizationError
from tfedge.models import training

__all__ = [
    "Distiller",
    "distill",
    "make_student",
    "half_width_student",
    "ends_in_softmax",
    "DEFAULT_STEPS",
]

DEFAULT_STEPS = 1300
# The smallest normal float32: log-probabilities keep their spread down to about -87 (a clip at
# 1e-7 would flatten a confident teacher's soft targets).
_EPSILON = 1.1754944e-38
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


@keras.utils.register_keras_serializable(package="tfedge")
class Distiller(keras.Model):
    """A model that trains ``student`` on labels and on a frozen ``teacher``'s softened outputs.

    Calling the distiller calls the student; only the student's weights are trained. Compile it
    with an optimizer and metrics (no loss: the loss is built in), then ``fit`` on ``(x, y)``.

    Args:
        student: the model to train.
        teacher: the model to learn from (never trained).
        temperature: the softening temperature ``T`` (> 0).
        alpha: the weight of the true-label loss; the teacher's loss gets ``1 - alpha``.
        student_probabilities: whether the student outputs probabilities (None: True when its
            last layer ends in a softmax).
        teacher_probabilities: the same for the teacher.

    Example:
        >>> distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)  # doctest: +SKIP
        >>> distiller.compile(optimizer="adam", metrics=["accuracy"])  # doctest: +SKIP
        >>> distiller.fit(x, y, epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        student,
        teacher,
        temperature: float = 4.0,
        alpha: float = 0.1,
        student_probabilities: bool | None = None,
        teacher_probabilities: bool | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise OptimizationError(
                f"temperature {temperature} must be > 0", "use 2-10; 4 is a good start"
            )
        if not 0.0 <= alpha <= 1.0:
            raise OptimizationError(
                f"alpha {alpha} must be between 0 and 1 (the weight of the true-label loss)",
                "use 0.1: mostly the teacher's soft targets, a little of the labels",
            )
        self.student = student
        self.teacher = teacher  # called with training=False; only the student's weights train
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.student_probabilities = (
            ends_in_softmax(student) if student_probabilities is None else student_probabilities
        )
        self.teacher_probabilities = (
            ends_in_softmax(teacher) if teacher_probabilities is None else teacher_probabilities
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        compiled = getattr(self, "compiled_metrics", None)
        return [self.loss_tracker, *(compiled.metrics if compiled is not None else [])]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _logits(self, outputs, probabilities: bool):
        outputs = tf.cast(outputs, tf.float32)
        if outputs.shape[-1] == 1:
            # A binary classifier (sigmoid or logit): the two-class logits [log(1-p), log(p)],
            # or [0, z] for a logit z, whose softmax is (1 - sigmoid(z), sigmoid(z)).
            if probabilities:
                return tf.math.log(
                    tf.clip_by_value(tf.concat([1.0 - outputs, outputs], -1), _EPSILON, 1.0)
                )
            return tf.concat([tf.zeros_like(outputs), outputs], -1)
        if probabilities:
            return tf.math.log(tf.clip_by_value(outputs, _EPSILON, 1.0))
        return outputs

    def distillation_loss(self, y, student_outputs, teacher_outputs):
        """The combined loss for one batch (labels ``y``, raw student and teacher outputs)."""
        student_logits = self._logits(student_outputs, self.student_probabilities)
        teacher_logits = self._logits(teacher_outputs, self.teacher_probabilities)
        hard = keras.losses.sparse_categorical_crossentropy(y, student_logits, from_logits=True)
        t = self.temperature
        log_soft_teacher = tf.nn.log_softmax(teacher_logits / t, axis=-1)
        log_soft_student = tf.nn.log_softmax(student_logits / t, axis=-1)
        soft_teacher = tf.exp(log_soft_teacher)
        kl = tf.reduce_sum(soft_teacher * (log_soft_teacher - log_soft_student), axis=-1)
        return tf.reduce_mean(self.alpha * hard + (1.0 - self.alpha) * kl * (t * t))

    def train_step(self, data):
        x, y = data[0], data[1]
        teacher_outputs = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            student_outputs = self.student(x, training=True)
            loss = self.distillation_loss(y, student_outputs, teacher_outputs)
            if self.student.losses:
                loss += tf.add_n(self.student.losses)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / tf.cast(replicas, loss.dtype)
        variables = self.student.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.loss_tracker.update_state(loss)
        self.compiled_metrics.update_state(y, student_outputs)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data[0], data[1]
        student_outputs = self.student(x, training=False)
        logits = self._logits(student_outputs, self.student_probabilities)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )
        self.loss_tracker.update_state(loss)
        self.compiled_metrics.update_state(y, student_outputs)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {
            "student": keras.utils.serialize_keras_object(self.student),
            "teacher": keras.utils.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "student_probabilities": self.student_probabilities,
            "teacher_probabilities": self.teacher_probabilities,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.utils.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)


def ends_in_softmax(model) -> bool:
    """True when the model's last layer applies a softmax (seen through tfmot's wrappers), or a
    sigmoid to a binary classifier's single output.

    Example:
        >>> ends_in_softmax(build("digits_cnn"))  # doctest: +SKIP
        True
    """
    layer = model.layers[-1] if getattr(model, "layers", None) else None
    while layer is not None:
        if isinstance(layer, keras.layers.Softmax):
            return True
        activation = getattr(layer, "activation", None)
        while activation is not None and hasattr(activation, "activation"):
            activation = activation.activation  # tfmot's QuantizeAwareActivation
        name = getattr(activation, "__name__", None) or (
            activation if isinstance(activation, str) else None
        )
        if name == "softmax":
            return True
        if name == "sigmoid" and _one_output(model):
            return True  # a binary classifier's probability
        layer = getattr(layer, "layer", None)
    return False


def _one_output(model) -> bool:
    shape = getattr(model, "output_shape", None)
    return isinstance(shape, tuple) and len(shape) == 2 and shape[-1] == 1


def distill(
    model,
    train,
    val,
    *,
    epochs: int | None = None,
    teacher=None,
    strategy=None,
    temperature: float = 4.0,
    alpha: float = 0.1,
    batch_size: int = training.DEFAULT_BATCH_SIZE,
    learning_rate: float = 2e-3,
    params: float = 0.5,
    width: float | None = None,
    new_student: bool = False,
    seed: int | None = 0,
    desc: str = "distilling",
):
    """Train the student ``model`` from ``teacher`` and the labels; return the trained student.

    The student may be untrained (e.g. from :func:`make_student`) or a trained model to refine.
    When ``model`` is the teacher itself (``tfedge optimize --distill`` passes the float model as
    both), a fresh student is made first with :func:`make_student` (``params``, ``width``).
    Teacher and student may output probabilities or logits (detected on the data).

    Args:
        model: the student, a tf_keras classifier with the teacher's inputs and classes.
        train: training :class:`~tfedge.data.Dataset` with labels.
        val: validation :class:`~tfedge.data.Dataset`; the best epoch on it is kept.
        epochs: training epochs (None: about 1300 optimizer steps, at least 10 epochs).
        teacher: the trained model to learn from (required).
        strategy: a ``tf.distribute`` strategy to train under, or None.
        temperature: the softening temperature.
        alpha: the weight of the true-label loss (the teacher's soft loss gets ``1 - alpha``).
        batch_size: the batch size.
        learning_rate: Adam's initial learning rate (cosine-decayed).
        params: the student's parameter fraction, when the student is made here.
        width: the student's width factor, when the student is made here (overrides ``params``).
        new_student: make a fresh student of ``teacher``'s architecture (``params``/``width``)
            instead of training ``model`` (what ``tfedge optimize --distill`` asks for).
        seed: the random seed.
        desc: the progress bar's label.

    Returns:
        The trained student (``model`` itself unless a student was made), ready to convert.

    Raises:
        OptimizationError: without a teacher, or when teacher and student disagree on shapes.

    Example:
        >>> student = distill(make_student(teacher), train, val, teacher=teacher)  # doctest: +SKIP
    """
    if teacher is None:
        raise OptimizationError(
            "distillation needs a teacher model, got teacher=None",
            "pass teacher=<the trained float model>, e.g. distill(student, train, val, teacher=model)",
        )
    same = model is teacher or new_student
    teacher = training.as_keras2(teacher)
    model = teacher if same else training.as_keras2(model)
    if same:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        model = make_student(teacher, width=width, params=params, strategy=strategy)
    if tuple(teacher.output_shape) != tuple(model.output_shape) or tuple(
        teacher.input_shape
    ) != tuple(model.input_shape):
        raise OptimizationError(
            f"student {model.name!r} maps {model.input_shape} -> {model.output_shape} but teacher "
            f"{teacher.name!r} maps {teacher.input_shape} -> {teacher.output_shape}",
            "the student needs the teacher's input shape and number of classes",
        )
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, batch_size, minimum=10)
    training.fit(
        model,
        train,
        val,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        teacher=teacher,
        temperature=temperature,
        alpha=alpha,
        strategy=strategy,
        desc=desc,
        seed=seed,
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
    flat = training.flatten_model(model)
    if isinstance(flat, keras.Sequential):
        flat = training.flatten_model(keras.Model(flat.inputs, flat.outputs, name=flat.name))
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
            f"{training._first_line(exc)}",
            "layers with fixed shapes (Reshape, residual Adds with the input) may need the "
            "student built by hand",
        ) from exc
    student._name = f"{original.name}_student"
    return student
