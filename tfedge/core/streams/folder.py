"""Image folders (one sub-folder per class), decoded per batch by ``tf.data``."""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import os
from pathlib import Path

import numpy as np

import tfedge.core.data_readers as data_readers
from tfedge.core.console import quiet
from tfedge.core.data import DATA_HINT
from tfedge.core.errors import InputFileError, tf_message
from tfedge.core.streams.readers import _file_key, _Reader, decode_resized


class _FolderReader(_Reader):
    """An image folder: files listed once, decoded per batch by ``tf.data``."""

    random_access = True

    def __init__(self, path: Path, input_shape, name):
        # The listing and its errors are load_data's own (the same words whether read whole or not).

        self.path = path
        self.source = str(path)
        self.name = name
        self.class_names, files = data_readers._folder_files(path, name)
        self.files = np.array([str(f) for f, _ in files])
        self.labels = np.array([label for _, label in files], dtype=np.int64)
        self.height = self.width = None
        self.channels = 3
        if input_shape is not None and len(input_shape) == 3:
            self.height, self.width, self.channels = input_shape
            self.channels = self.channels or 3
        if self.height is None:
            first = self._decode_eager(self.files[0])
            self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def estimate_bytes(self):
        return 4 * len(self.files) * self.height * self.width * self.channels

    def count(self):
        return len(self.files)

    def locate(self, index):
        return self.files[index]

    def key(self):
        return _file_key(self.files)

    def _decode_eager(self, file):
        from tfedge.core.backend import tf

        try:
            with quiet():  # libjpeg's own "Input file read error" line on stderr
                image = tf.io.decode_image(
                    tf.io.read_file(str(file)), channels=self.channels, expand_animations=False
                )
        except Exception as exc:
            raise InputFileError(
                f"cannot decode image {file}: {tf_message(exc)}", DATA_HINT
            ) from None
        if self.height is not None and (
            image.shape[0] != self.height or image.shape[1] != self.width
        ):
            image = tf.image.resize(image, (self.height, self.width), method="bilinear")
        return np.asarray(image, dtype=np.float32)

    def raw(self, batch_size, order=None, shuffle=None):
        from tfedge.core.backend import tf

        ids = np.arange(len(self.files)) if order is None else np.asarray(order)
        height, width, channels = self.height, self.width, self.channels

        def decode(file):
            return decode_resized(tf.io.read_file(file), height, width, channels)

        dataset = (
            tf.data.Dataset.from_tensor_slices(self.files[ids])
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(2)
        )
        iterator = iter(dataset)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            try:
                x = next(iterator).numpy()
            except (tf.errors.OpError, StopIteration):
                for index in chunk:  # the file tf.data stopped on, named by the eager decoder
                    self._decode_eager(self.files[index])
                raise InputFileError(
                    f"cannot decode the images {self.files[chunk[0]]} ...", DATA_HINT
                ) from None
            yield x, self.labels[chunk], chunk

    def file_dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """``(x, y)`` batches from a file-list pipeline (``tf.data`` FILE auto-sharding sees the
        files: each worker of a MultiWorkerMirroredStrategy reads its own share); None where a
        path holds a glob character (``tf.data.Dataset.list_files`` would read it as a pattern).
        """
        from tfedge.core.backend import tf

        if any(set(file) & set("*?[\\") for file in self.files):
            return None
        height, width, channels = self.height, self.width, self.channels
        prefixes = [str(self.path / name) + os.sep for name in self.class_names]
        heads = tf.constant(prefixes)
        lengths = tf.constant([len(prefix.encode()) for prefix in prefixes])

        def decode(file):
            # The label is the class folder the path starts with.
            starts = tf.strings.substr(
                tf.fill(tf.shape(heads), file), tf.zeros_like(lengths), lengths
            )
            label = tf.argmax(tf.cast(tf.equal(starts, heads), tf.int32), output_type=tf.int64)
            return decode_resized(tf.io.read_file(file), height, width, channels), label

        files = tf.data.Dataset.list_files(list(self.files), shuffle=False)
        if shuffle:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
