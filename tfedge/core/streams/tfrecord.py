"""TFRecord shards of ``tf.train.Example`` records, read by ``tf.data``."""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import glob
import os

import numpy as np

from tfedge.core.errors import DataError, InputFileError, tf_message
from tfedge.core.streams.readers import SHUFFLE_RECORDS, _file_key, _Reader, decode_resized

#: The default feature names of TFRecord shards (``tf.train.Example``).
TFRECORD_FEATURES = {"image": "image/encoded", "label": "image/class/label"}
TFRECORD_HINT = (
    "TFRecord shards hold tf.train.Example records with an encoded image in 'image/encoded' and "
    "an int64 label in 'image/class/label'; name other features after '#': "
    "'shards/*.tfrecord#image=KEY,label=KEY'"
)


class _TfRecordReader(_Reader):
    """TFRecord shards of ``tf.train.Example`` records, read in file order by ``tf.data``."""

    def __init__(self, spec: str, input_shape, name):
        pattern, _, options = spec.partition("#")
        self.features = dict(TFRECORD_FEATURES)
        for part in filter(None, options.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key.strip() not in self.features:
                raise DataError(
                    f"{name} TFRecord option {part!r} is not image=KEY or label=KEY", TFRECORD_HINT
                )
            self.features[key.strip()] = value.strip() or None
        self.files = sorted(glob.glob(os.path.expanduser(pattern)))
        self.source = pattern
        self.name = name
        if not self.files:
            raise InputFileError(f"{name}: no TFRecord files match {pattern}", TFRECORD_HINT)
        self.order = list(self.files)
        self.counts = None
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self._inspect_first()

    def _inspect_first(self):
        from tfedge.core.backend import tf

        first = None
        for file in self.files:
            try:
                first = next(iter(tf.data.TFRecordDataset(file).take(1)), None)
            except tf.errors.OpError as exc:
                raise InputFileError(
                    f"cannot read TFRecord file {file}: {tf_message(exc)}", TFRECORD_HINT
                ) from None
            if first is not None:
                self.first_file = file
                break
        if first is None:
            raise DataError(
                f"{self.name}: the TFRecord files {self.source} hold no records", TFRECORD_HINT
            )
        try:
            example = tf.train.Example.FromString(first.numpy())
        except Exception as exc:
            raise InputFileError(
                f"{self.first_file} record 0 is not a tf.train.Example: {str(exc)[:100]}",
                TFRECORD_HINT,
            ) from None
        found = example.features.feature
        image_key, label_key = self.features["image"], self.features["label"]
        if image_key not in found:
            raise DataError(
                f"{self.name} ({self.first_file}) record 0 has features {sorted(found)[:10]}; "
                f"expected the image in {image_key!r}",
                TFRECORD_HINT,
            )
        self.kind = found[image_key].WhichOneof("kind")
        if self.kind == "bytes_list":
            self.height = self.width = None
            self.channels = 3
            if self.input_shape is not None and len(self.input_shape) == 3:
                self.height, self.width, self.channels = self.input_shape
                self.channels = self.channels or 3
            if self.height is None:
                image = tf.io.decode_image(
                    found[image_key].bytes_list.value[0], channels=3, expand_animations=False
                )
                self.height, self.width = int(image.shape[0]), int(image.shape[1])
            self.sample_shape = (self.height, self.width, self.channels)
        else:
            values = getattr(found[image_key], self.kind).value
            shape = self.input_shape
            if shape is None or any(d is None for d in shape) or int(np.prod(shape)) != len(values):
                shape = (len(values),)
            self.sample_shape = tuple(shape)
        self.labelled = bool(label_key) and label_key in found
        if label_key and not self.labelled and label_key != TFRECORD_FEATURES["label"]:
            # A label feature the user named and the records lack: accuracy would silently vanish.
            raise DataError(
                f"{self.name} ({self.first_file}) record 0 has features {sorted(found)[:10]}; "
                f"expected the label in {label_key!r}",
                TFRECORD_HINT,
            )

    def estimate_bytes(self):
        return None

    def known_count(self):
        return None if self.counts is None else sum(self.counts.values())

    def count(self):
        if self.counts is None:
            from tfedge.core.backend import tf

            self.counts = {
                file: int(tf.data.TFRecordDataset(file).reduce(np.int64(0), lambda n, _: n + 1))
                for file in self.files
            }
        return sum(self.counts.values())

    def shuffled_files(self, rng):
        reader = self

        class _Order:
            def __enter__(self):
                reader.order = [reader.files[i] for i in rng.permutation(len(reader.files))]

            def __exit__(self, *exc):
                reader.order = list(reader.files)
                return False

        return _Order()

    def locate(self, index):
        self.count()
        for file in self.order:
            if index < self.counts[file]:
                return f"{file} record {index}"
            index -= self.counts[file]
        return None

    def key(self):
        return _file_key(self.files)

    def _parse(self):
        from tfedge.core.backend import tf

        image_key, label_key = self.features["image"], self.features["label"]
        spec = {}
        if self.kind == "bytes_list":
            spec[image_key] = tf.io.FixedLenFeature([], tf.string)
        else:
            dtype = tf.float32 if self.kind == "float_list" else tf.int64
            spec[image_key] = tf.io.FixedLenFeature([int(np.prod(self.sample_shape))], dtype)
        if self.labelled:
            spec[label_key] = tf.io.FixedLenFeature([], tf.int64)
        height, width, channels = (self.sample_shape + (None, None, None))[:3]
        shape = self.sample_shape

        def parse(record):
            features = tf.io.parse_single_example(record, spec)
            if self.kind == "bytes_list":
                image = decode_resized(features[image_key], height, width, channels)
            else:
                image = tf.reshape(tf.cast(features[image_key], tf.float32), shape)
            if self.labelled:
                return image, features[label_key]
            return (image,)

        return parse

    def file_dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """``(x, y)`` batches (``x`` alone without labels) from a pipeline over the shard list,
        so that ``tf.data`` FILE auto-sharding gives each worker of a MultiWorkerMirroredStrategy
        its own shards. With ``shuffle``: the shards in a seeded order, read four at a time, and
        a shuffle buffer of :data:`SHUFFLE_RECORDS` serialized records."""
        from tfedge.core.backend import tf

        parse = self._parse()
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if shuffle:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        records = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(4, len(self.files)) if shuffle else 1,
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if shuffle:
            records = records.shuffle(SHUFFLE_RECORDS, seed=seed)
        decoded = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        if not self.labelled:
            decoded = decoded.map(lambda x: x)
        return decoded.batch(batch_size)

    def raw(self, batch_size, order=None, shuffle=None):
        from tfedge.core.backend import tf

        parse = self._parse()
        records = tf.data.TFRecordDataset(self.order)
        if shuffle is not None:  # the serialized records, a few KB each, numbered in file order
            records = records.enumerate().shuffle(SHUFFLE_RECORDS, seed=int(shuffle))

            def numbered(index, record):
                return (index, *parse(record))

            decoded = records.map(numbered, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            decoded = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        iterator = iter(decoded.batch(batch_size).prefetch(2))
        position = 0
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except (tf.errors.OpError, UnicodeDecodeError) as exc:
                start, count = (0, None) if shuffle is not None else (position, batch_size)
                raise self._bad_record(start, count, parse, exc) from None
            ids = None
            if shuffle is not None:
                ids, batch = batch[0].numpy(), batch[1:]
            x = batch[0].numpy()
            y = batch[1].numpy() if self.labelled else None
            yield x, y, ids
            position += len(x)

    def _bad_record(self, position, count, parse, exc):
        """The error for the first record from ``position`` (``count`` of them, None: all) that
        does not parse or decode."""
        from tfedge.core.backend import tf

        records = tf.data.TFRecordDataset(self.order).skip(position)
        if count is not None:
            records = records.take(count)
        for offset, record in enumerate(records):
            try:
                parse(record)
            except (tf.errors.OpError, ValueError) as inner:
                # UnicodeDecodeError is a ValueError: TensorFlow's message quoted the record's
                # bytes, which are not text.
                why = (
                    "it does not parse as a tf.train.Example"
                    if isinstance(inner, UnicodeDecodeError)
                    else tf_message(inner)
                )
                where = self.locate(position + offset)
                return DataError(
                    f"{self.name} ({self.source}) sample {position + offset} ({where}) cannot be read: "
                    f"{why}",
                    TFRECORD_HINT,
                )
        why = (
            "TensorFlow's error quoted a record's bytes, which are not text"
            if isinstance(exc, UnicodeDecodeError)
            else tf_message(exc)
        )
        return InputFileError(f"cannot read {self.name} ({self.source}): {why}", TFRECORD_HINT)
