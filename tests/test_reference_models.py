"""The real-size references: published parameter counts, fully-int8 files near the published sizes."""

import numpy as np
import pytest

from tfedge.converters import convert
from tfedge.core.inspector import inspect_model
from tfedge.models import zoo
from tfedge.models.reference import PUBLISHED


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.REFERENCE))
def test_reference_model_matches_its_published_size(name, tmp_path):
    model = zoo.build(name)
    assert model.count_params() == PUBLISHED[name]["params"]
    shape = model.input_shape[1:]
    calib = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(convert(model, calib=calib, calib_samples=16))
    info = inspect_model(path)
    assert info["fully_integer"] and info["input"][0]["dtype"] == "int8"
    assert info["input"][0]["shape"] == [1, *shape]
    published = PUBLISHED[name]["int8_bytes"]
    assert abs(info["size_bytes"] - published) <= 0.25 * published


def test_build_names_the_real_size_references_for_an_unknown_name():
    from tfedge.core.errors import OptimizationError

    with pytest.raises(OptimizationError, match="vww_mobilenet") as caught:
        zoo.build("mobilenet_v3")
    assert "kws_ds_cnn" in str(caught.value)
