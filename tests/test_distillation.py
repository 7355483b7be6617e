"""Knowledge distillation: the loss, probabilities vs logits, smaller students that keep accuracy."""

import numpy as np
import pytest

from tfedge.core.errors import OptimizationError


def _logits_twin(model):
    """The same model without its final softmax: it outputs logits."""
    from tfedge.core.backend import keras

    config = model.get_config()
    config["layers"][-1]["config"]["activation"] = "linear"
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
def test_loss_is_the_same_for_probability_and_logit_outputs(trained_digits_cnn, digits, alpha):
    from tfedge.models.distillation import Distiller

    teacher = trained_digits_cnn
    logits_teacher = _logits_twin(teacher)
    student = _logits_twin(teacher)
    x, y = digits[1].x[:64], digits[1].y[:64]
    from_probabilities = Distiller(student, teacher, temperature=4.0, alpha=alpha)
    from_logits = Distiller(student, logits_teacher, temperature=4.0, alpha=alpha)
    assert from_probabilities.teacher_probabilities and not from_logits.teacher_probabilities
    assert not from_probabilities.student_probabilities
    a = float(from_probabilities.distillation_loss(y, student(x), teacher(x)))
    b = float(from_logits.distillation_loss(y, student(x), logits_teacher(x)))
    assert a == pytest.approx(b, rel=1e-3, abs=1e-5)


def test_loss_is_label_loss_when_student_matches_teacher(trained_digits_cnn, digits):
    from tfedge.core.backend import keras
    from tfedge.models.distillation import Distiller

    teacher = trained_digits_cnn
    x, y = digits[1].x[:64], digits[1].y[:64]
    distiller = Distiller(teacher, teacher, temperature=3.0, alpha=0.25)
    outputs = teacher(x)
    label_loss = float(keras.losses.sparse_categorical_crossentropy(y, outputs).numpy().mean())
    loss = float(distiller.distillation_loss(y, outputs, outputs))
    assert loss == pytest.approx(0.25 * label_loss, rel=1e-3)


def test_loss_matches_hintons_formula(trained_digits_cnn, digits):
    from tfedge.models.distillation import Distiller

    teacher = _logits_twin(trained_digits_cnn)
    student = _logits_twin(trained_digits_cnn)
    x, y = digits[1].x[:64], digits[1].y[:64]
    teacher_logits = teacher(x).numpy().astype(np.float64)
    student_logits = 0.5 * teacher_logits + 0.1  # a softer, different student
    t, alpha = 2.0, 0.3

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_teacher, p_student = softmax(teacher_logits / t), softmax(student_logits / t)
    kl = (p_teacher * (np.log(p_teacher) - np.log(p_student))).sum(axis=1)
    hard = -np.log(softmax(student_logits)[np.arange(len(y)), y])
    expected = (alpha * hard + (1 - alpha) * kl * t * t).mean()
    distiller = Distiller(student, teacher, temperature=t, alpha=alpha)
    loss = float(distiller.distillation_loss(y, student_logits, teacher_logits))
    assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("params", "width"), [(0.5, None), (0.5, 0.5)])
def test_students_are_smaller_copies_of_the_teacher(trained_digits_cnn, params, width):
    from tfedge.models.distillation import make_student

    student = make_student(trained_digits_cnn, params=params, width=width)
    assert student.input_shape == trained_digits_cnn.input_shape
    assert student.output_shape == trained_digits_cnn.output_shape
    assert student.count_params() <= params * trained_digits_cnn.count_params()
    if width is None:  # the widest student under the budget: not far below it
        assert student.count_params() >= 0.4 * trained_digits_cnn.count_params()
    assert [type(layer) for layer in student.layers] == [
        type(layer) for layer in trained_digits_cnn.layers
    ]
    assert all(layer.trainable for layer in student.layers)


def test_half_the_parameters_keeps_accuracy(trained_digits_cnn, digits, accuracy_of, tmp_path):
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model
    from tfedge.models.distillation import distill, make_student

    train, test = digits
    student = distill(make_student(trained_digits_cnn), train, test, teacher=trained_digits_cnn)
    teacher_accuracy = accuracy_of(trained_digits_cnn, test)
    assert accuracy_of(student, test) >= teacher_accuracy - 0.03
    assert inspect_model(convert(student, calib=train))["fully_integer"]
    path = tmp_path / "student.keras"
    student.save(path)
    from tfedge.core.loading import load_model

    loaded = load_model(path).model
    np.testing.assert_allclose(
        loaded.predict(test.x[:16], verbose=0), student.predict(test.x[:16], verbose=0), atol=1e-6
    )


def test_distilling_the_teacher_into_itself_makes_a_student(trained_digits_cnn, digits):
    from tfedge.models.distillation import distill

    student = distill(
        trained_digits_cnn, digits[0], digits[1], teacher=trained_digits_cnn, epochs=1
    )
    assert student is not trained_digits_cnn
    assert student.count_params() <= 0.5 * trained_digits_cnn.count_params()


def test_logit_teacher_and_strategy(trained_digits_cnn, digits):
    from tfedge.core.backend import tf
    from tfedge.models.distillation import distill, half_width_student

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    teacher = _logits_twin(trained_digits_cnn)
    student = half_width_student(trained_digits_cnn, strategy=strategy)
    distill(student, digits[0], digits[1], teacher=teacher, epochs=2, strategy=strategy)
    predictions = student.predict(digits[1].x, verbose=0).argmax(axis=-1)
    assert (predictions == digits[1].y).mean() > 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"teacher": None}, "needs a teacher"),
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_bad_arguments_say_what_to_do(trained_digits_cnn, digits, kwargs, message):
    from tfedge.models.distillation import distill, half_width_student

    kwargs = {"teacher": trained_digits_cnn, **kwargs}
    with pytest.raises(OptimizationError, match=message) as caught:
        distill(half_width_student(trained_digits_cnn), digits[0], digits[1], epochs=1, **kwargs)
    assert caught.value.hint


def test_student_with_other_classes_is_refused(trained_digits_cnn, digits):
    from tfedge.core.backend import keras
    from tfedge.models.distillation import distill

    inputs = keras.Input((16, 16, 1))
    other = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(OptimizationError, match="maps") as caught:
        distill(other, digits[0], digits[1], teacher=trained_digits_cnn, epochs=1)
    assert "number of classes" in caught.value.hint


def test_binary_loss_is_the_same_for_sigmoid_and_logit_outputs():
    """A (batch, 1) classifier distils as the two-class softmax of [0, logit]."""
    from tfedge.core.backend import keras, tf
    from tfedge.models.distillation import Distiller, ends_in_softmax

    rng = np.random.default_rng(0)
    z_student = rng.normal(size=(16, 1)).astype("float32") * 3
    z_teacher = rng.normal(size=(16, 1)).astype("float32") * 3
    y = rng.integers(0, 2, 16)
    sigmoid = keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(2,))])
    logit = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    assert ends_in_softmax(sigmoid) and not ends_in_softmax(logit)
    probs = Distiller(sigmoid, sigmoid, alpha=0.3)
    logits = Distiller(logit, logit, alpha=0.3)
    a = probs.distillation_loss(y, tf.sigmoid(z_student), tf.sigmoid(z_teacher))
    b = logits.distillation_loss(y, z_student, z_teacher)
    assert float(a) == pytest.approx(float(b), rel=1e-4)
    # alpha=1: plain binary cross-entropy on the labels
    only_labels = Distiller(logit, logit, alpha=1.0).distillation_loss(y, z_student, z_teacher)
    expected = keras.losses.binary_crossentropy(
        y[:, None].astype("float32"), z_student, from_logits=True
    )
    assert float(only_labels) == pytest.approx(float(np.mean(expected)), rel=1e-4)
