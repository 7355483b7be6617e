"""The bundled handwritten digits (scikit-learn's 1797 real 8x8 images), as 16x16 images.

Used by ``tfedge demo``, the tests and the benchmarks: real data, shipped inside scikit-learn, so
nothing is downloaded.

Example:
    >>> train, test = load_digits()
    >>> train.x.shape, test.x.shape
    ((1400, 16, 16, 1), (397, 16, 16, 1))
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import numpy as np

from tfedge.core.data import Dataset

__all__ = ["load_digits", "TEST_SIZE"]

TEST_SIZE = 397


def load_digits(size: int = 16, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Return ``(train, test)``: float32 NHWC images in [0, 1] and int64 labels 0-9.

    Args:
        size: image side, a multiple of 8 (the 8x8 originals are upsampled by pixel repetition).
        seed: the stratified split's seed.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0
    factor = size // 8
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    x = images[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=seed, stratify=y
    )
    names = [str(i) for i in range(10)]
    return (
        Dataset(x_train, y_train, names, "digits/train"),
        Dataset(x_test, y_test, names, "digits/test"),
    )
