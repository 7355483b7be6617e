"""The data ``optimize --auto`` measures on: the seeded validation/confirmation split and the
fingerprint that names a study.

The validation set is split, seeded and stratified by label (:func:`split_confirmation`), into
the part every candidate is measured on and a confirmation part only the chosen candidate sees;
a streamed set is split without being read whole (its labels first, then each half written
batch by batch). :func:`fingerprint` names the model, data and device a study searches, so a
resumed study only reuses results of the same search.

Example:
    >>> val, confirm = split_confirmation(Dataset(np.zeros((200, 4)), np.arange(200) % 2))
    >>> len(val), len(confirm)
    (100, 100)
"""

import hashlib
from pathlib import Path

import numpy as np

from tfedge.core.data import Dataset
from tfedge.core.errors import OptimizationError
from tfedge.core.streams import DataStream, stream_data, write_npz

__all__ = [
    "split_confirmation",
    "fingerprint",
    "MIN_SPLIT_SAMPLES",
    "CONFIRM_FRACTION",
    "CONFIRM_SEED",
]


# Below this many validation samples no confirmation part is kept back: each half would be too
# small to measure a one-point tolerance on (one sample is already 2 points at 50).
MIN_SPLIT_SAMPLES = 100
CONFIRM_FRACTION = 0.5
CONFIRM_SEED = 0


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def _data_digest(data) -> str:
    """A digest of a data set: its arrays' bytes in memory, its files' identity when streamed.

    A :class:`DataStream` is named by its files (names, sizes, times: :meth:`DataStream.key`),
    so naming it reads none of its samples.
    """
    if isinstance(data, DataStream):
        digest = hashlib.sha256(f"stream:{data.key()}".encode())
    else:
        digest = hashlib.sha256(data.x.tobytes())
        if data.y is not None:
            digest.update(data.y.tobytes())
    return digest.hexdigest()[:32]


def _part_digest(whole: str, fraction: float, part: str) -> str:
    """A part of a streamed set's split, named by the whole set's digest (its files are new)."""
    return hashlib.sha256(f"{whole}:{fraction}:{CONFIRM_SEED}:{part}".encode()).hexdigest()[:32]


def _held_back(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The confirmation part's mask: ``fraction`` of each label's samples, seeded."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(len(members) * fraction))
        if count >= len(members):  # a label with one sample stays in the search part
            count = len(members) - 1
        held.extend(rng.permutation(members)[:count].tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def split_confirmation(
    data, fraction: float = CONFIRM_FRACTION, seed: int = CONFIRM_SEED, *, folder=None
):
    """Split labelled data into ``(search, confirmation)`` parts, seeded and stratified by label.

    Each label's samples are shuffled with ``seed`` and ``fraction`` of them (rounded) go to the
    confirmation part, so both parts keep the class balance; equal inputs give equal parts.

    A :class:`~tfedge.core.data.Dataset` is split in memory. A :class:`DataStream` is never held
    whole: its labels are read first (8 bytes a sample), then each part is written batch by
    batch to ``folder/val.npz`` and ``folder/confirm.npz`` (uncompressed, so their readers
    memory-map them) and returned as a stream of that file. The parts are the ones the same
    samples in memory would give.

    Example:
        >>> search_part, confirm_part = split_confirmation(val)  # doctest: +SKIP
        >>> len(search_part) + len(confirm_part) == len(val)  # doctest: +SKIP
        True
    """
    if not isinstance(data, DataStream):
        mask = _held_back(data.y, fraction, seed)

        def part(select):
            return Dataset(data.x[select], data.y[select], data.class_names, data.source)

        return part(~mask), part(mask)
    if folder is None:
        raise OptimizationError(
            f"{data.name} ({data.source}) is streamed: its split needs a folder to write to",
            "pass split_confirmation(data, folder=...)",
        )
    mask = _held_back(np.concatenate([y for _, y in data.batches()]), fraction, seed)
    parts = []
    for name, select in (("val.npz", ~mask), ("confirm.npz", mask)):
        path = write_npz(
            Path(folder) / name, data.picked(select), int(select.sum()), data.input_shape
        )
        parts.append(
            stream_data(
                path,
                require_labels=True,
                name=data.name,
                num_classes=data.num_classes,
                in_memory_bytes=0,  # a set that streams keeps streaming
            )
        )
    return tuple(parts)


def fingerprint(source, model, train, val, *, device: str, target=None) -> dict:
    """What a study searches: the model, the data and the measuring setup, each as a digest.

    A study holding another model's (or data's, or device's) figures is refused when joined.

    Example:
        >>> fingerprint("model.keras", model, train, val, device="local")  # doctest: +SKIP
        {'model': '3f…', 'train': '…', 'val': '…', 'device': 'local', 'target': None}
    """
    path = Path(str(source))
    if path.exists():
        model_digest = _file_digest(path)
    else:
        digest = hashlib.sha256(model.to_json().encode())
        for weights in model.get_weights():
            digest.update(weights.tobytes())
        model_digest = digest.hexdigest()[:32]
    return {
        "model": model_digest,
        "train": _data_digest(train),
        "val": _data_digest(val),
        "device": device,
        "target": None if target is None else str(target),
    }
