"""Reference models, trainable on the bundled digits in seconds (all tf_keras).

Example:
    >>> from tfedge.models.zoo import build
    >>> model = build("digits_cnn")
    >>> model.output_shape
    (None, 10)
"""

from tfedge.backend import keras

__all__ = ["build", "ZOO", "train"]

L = keras.layers


def digits_cnn(input_shape=(16, 16, 1), classes=10, width=16) -> keras.Model:
    """The digits reference CNN: two conv blocks and a small dense head (about 40k parameters)."""
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(width * 2, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(2, name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    outputs = L.Dense(classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


ZOO = {"digits_cnn": digits_cnn}


def build(name: str, **kwargs) -> keras.Model:
    """Build a zoo model by name (``digits_cnn``, ...)."""
    from tfedge.errors import OptimizationError

    if name not in ZOO:
        raise OptimizationError(
            f"unknown zoo model {name!r}; expected one of {', '.join(sorted(ZOO))}"
        )
    return ZOO[name](**kwargs)


def train(
    model: keras.Model,
    train_data,
    val_data=None,
    epochs: int = 20,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> keras.Model:
    """Compile and fit a zoo model on a :class:`tfedge.data.Dataset` (quietly, seeded)."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = (val_data.x, val_data.y) if val_data is not None else None
    model.fit(
        train_data.x,
        train_data.y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation,
        verbose=0,
    )
    return model
