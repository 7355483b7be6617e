"""One error-statistics class: the SQNR, cosine and differences every tfedge report gives."""

import numpy as np
import pytest

from tfedge.core.error_stats import ErrorStats


def _stats(reference, values):
    stats = ErrorStats()
    for a, b in zip(reference, values, strict=True):
        stats.add(a[np.newaxis], b[np.newaxis])  # one sample with its batch axis, as models give
    return stats


def test_sqnr_is_signal_variance_over_noise_per_channel():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 5))
    noise = rng.normal(scale=0.01, size=(200, 5))
    stats = _stats(reference, reference + noise)
    per_channel = reference.var(axis=0) / (noise**2).mean(axis=0)
    assert stats.sqnr_db() == pytest.approx(10 * np.log10(np.median(per_channel)))
    assert stats.rmse == pytest.approx(np.sqrt((noise**2).mean()))
    assert stats.max_abs == pytest.approx(np.abs(noise).max())
    assert stats.cosine == pytest.approx(
        np.mean(
            [
                a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                for a, b in zip(reference, reference + noise, strict=True)
            ]
        )
    )


def test_an_outlier_channel_does_not_hide_the_crushed_ones():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(100, 8))
    reference[:, 0] *= 1000.0  # one huge channel
    values = np.round(reference / 8.0) * 8.0  # one coarse step for all channels, as int8 gives
    whole = 10 * np.log10((reference**2).sum() / ((values - reference) ** 2).sum())
    assert whole > 40  # the whole tensor looks fine
    assert _stats(reference, values).sqnr_db() < 0  # its small channels are lost


def test_identical_values_give_the_cap_and_say_so():
    x = np.arange(12.0).reshape(3, 4)
    stats = _stats(x, x)
    assert stats.identical and stats.sqnr_db() == 300.0 and stats.max_abs == 0
    assert ErrorStats().sqnr_db() is None


def test_a_constant_reference_falls_back_to_the_whole_tensor_power():
    reference = np.ones((5, 3))
    stats = _stats(reference, reference + 0.1)
    assert stats.sqnr_db() == pytest.approx(20.0)
