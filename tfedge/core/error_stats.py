"""How far one tensor's values are from a reference's, accumulated sample by sample.

One class, :class:`ErrorStats`, for every error tfedge reports: ``tfedge analyze`` (an int8
operator against its float twin) and ``tfedge compare`` (model B's tensor against model A's).
Its metrics mean the same wherever they appear:

- ``sqnr_db``: signal-to-quantization-noise ratio in dB, taken per channel (the last axis of a sample of two or more axes; a sample of one axis is
  one channel):
  for each channel, the reference's variance over every sample and position (the signal) over
  the mean squared error (the noise); the median over the channels whose reference varies (of
  their noise-to-signal ratios), so a few near-constant channels do not decide it. A tensor with one huge channel (an outlier) next
  to small ones keeps a good whole-tensor cosine, yet int8 crushes its small channels; the
  per-channel SQNR shows it. When no channel varies (a single sample of a vector, a constant
  tensor) the whole tensor's power over the noise is used. It is capped at 300 dB, which is
  also what identical values give (their ratio is infinite, which JSON cannot hold and no
  ranking can sort); :attr:`ErrorStats.identical` tells them apart.
- ``cosine``: the mean over samples of the cosine similarity of the two samples (1.0 for two
  zero samples, 0.0 when only one is zero).
- ``max_abs``, ``mean_abs``, ``rmse``: of the difference, over every value.

No per-sample array is kept: memory is one running sum per channel.

Example:
    >>> import numpy as np
    >>> stats = ErrorStats()
    >>> for x in np.linspace(0.0, 1.0, 8).reshape(4, 2):
    ...     stats.add(x, x + 0.01)
    >>> round(stats.sqnr_db(), 1), round(stats.max_abs, 6)
    (30.3, 0.01)
"""

import math

import numpy as np

__all__ = ["ErrorStats"]


class ErrorStats:
    """Running error statistics of values against a reference (see the module for each metric)."""

    def __init__(self):
        self.count = 0  # values seen
        self.samples = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.squared = 0.0  # sum of squared differences
        self.power = 0.0  # sum of the reference's squares
        self.cosines = 0.0  # sum of per-sample cosines
        self.rows = 0  # positions per channel seen
        self.channel_sum = self.channel_squares = self.channel_errors = None

    def add(self, reference: np.ndarray, values: np.ndarray) -> None:
        """One sample: the reference's values (the signal) and the values compared with them."""
        reference = np.asarray(reference, dtype=np.float64)
        error = np.asarray(values, dtype=np.float64) - reference
        values = reference + error
        self.samples += 1
        self.count += error.size
        if error.size:
            self.max_abs = max(self.max_abs, float(np.abs(error).max()))
        self.sum_abs += float(np.abs(error).sum())
        self.squared += float((error**2).sum())
        self.power += float((reference**2).sum())
        norm = float(np.linalg.norm(reference) * np.linalg.norm(values))
        if norm:
            self.cosines += float((reference * values).sum()) / norm
        elif not (reference.any() or values.any()):
            self.cosines += 1.0
        channels = reference.shape[-1] if reference.ndim > 1 else 1
        per_ref, per_err = reference.reshape(-1, channels), error.reshape(-1, channels)
        if self.channel_sum is None or len(self.channel_sum) != channels:
            self.channel_sum = np.zeros(channels)
            self.channel_squares = np.zeros(channels)
            self.channel_errors = np.zeros(channels)
        self.rows += len(per_ref)
        self.channel_sum += per_ref.sum(axis=0)
        self.channel_squares += (per_ref**2).sum(axis=0)
        self.channel_errors += (per_err**2).sum(axis=0)

    @property
    def identical(self) -> bool:
        """No value differed."""
        return self.squared == 0

    @property
    def mean_abs(self) -> float | None:
        return self.sum_abs / self.count if self.count else None

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self.squared / self.count) if self.count else None

    @property
    def cosine(self) -> float | None:
        return self.cosines / self.samples if self.samples else None

    def sqnr_db(self) -> float | None:
        """The per-channel SQNR in dB (at most 300, identical values included); None before any value."""
        if not self.count:
            return None
        rows = max(self.rows, 1)
        mean = self.channel_sum / rows
        variance = np.maximum(self.channel_squares / rows - mean**2, 0.0)
        noise = self.channel_errors / rows
        live = variance > 1e-12 * max(float(variance.max()), 1e-30)
        if live.any():
            ratio = float(np.median(noise[live] / variance[live]))
        else:
            ratio = self.squared / max(self.power, 1e-30)
        return min(10.0 * math.log10(1.0 / max(ratio, 1e-30)), 300.0)
