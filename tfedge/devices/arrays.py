"""A streamed data set made into arrays the LiteRT runner reads a batch at a time.

The device-side runner (:mod:`tfedge.devices.runner`) takes ``(x, y)`` arrays; a
:class:`~tfedge.core.streams.DataStream` too large for memory is written once to an uncompressed
``.npz`` and handed over as a memory-mapped :class:`~tfedge.devices.runner.NpzArray`.
"""

import atexit
import shutil
import tempfile
from pathlib import Path

from tfedge.core.streams import DataStream
from tfedge.devices.runner import load_data

__all__ = ["to_arrays"]


def to_arrays(data, folder=None) -> tuple:
    """``(x, y)`` of a set: its own arrays when in memory, else an ``.npz`` on disk read by slices.

    A :class:`DataStream` is written batch by batch to ``folder/data.npz`` (default: a temporary
    folder removed when the process ends) and ``x`` comes back as a
    :class:`~tfedge.devices.runner.NpzArray` (``len``, ``shape``, slices, iteration; ``x.path`` is the
    file), so the LiteRT runner reads it a batch at a time.

    Example:
        >>> x, y = to_arrays(stream_data("shards/*.tfrecord"), tmp)  # doctest: +SKIP
    """
    if not isinstance(data, DataStream):
        return data.x, data.y
    if folder is None:
        folder = tempfile.mkdtemp(prefix="tfedge-data-")
        atexit.register(shutil.rmtree, folder, True)
    return load_data(str(data.save(Path(folder) / "data.npz")))
