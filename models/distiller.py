"""The distillation loss as a Keras model: a student trained on labels and a teacher's soft outputs.

The loss is Hinton's: the KL divergence between the teacher's and the student's
temperature-softened outputs, times ``T**2``, weighted ``1 - alpha``, plus ``alpha`` times the
cross-entropy with the true labels. Teachers and students may output probabilities (a softmax at
the end) or logits; probabilities are turned into log-probabilities, which soften the same way.

Example:
    >>> from tfedge.models.distiller import Distiller
    >>> distiller = Distiller(student, teacher, temperature=1.0, alpha=0.5)  # doctest: +SKIP
"""

from tfedge.core.backend import keras, tf
from tfedge.core.errors import OptimizationError

__all__ = ["Distiller", "ends_in_softmax"]

# The smallest normal float32: log-probabilities keep their spread down to about -87 (a clip at
# 1e-7 would flatten a confident teacher's soft targets).
_EPSILON = 1.1754944e-38


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
