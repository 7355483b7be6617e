"""No code from a model file runs: a saved Python ``lambda`` is refused in every format."""

import pytest

from tfedge.cli import main
from tfedge.core.loading import load_model


def _lambda_model(flavour: str, marker):
    """A model whose Lambda layer writes ``marker`` when it runs (as a hostile file would)."""
    from tfedge.core.backend import keras, keras3

    k = keras if flavour == "tf_keras" else keras3
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]"
    inputs = k.Input((4,))
    outputs = k.layers.Dense(2)(k.layers.Lambda(eval(code))(inputs))
    return k.Model(inputs, outputs)


@pytest.mark.parametrize(
    "flavour, suffix",
    [("tf_keras", ".h5"), ("tf_keras", ".keras"), ("keras3", ".keras"), ("keras3", ".h5")],
)
def test_a_saved_lambda_is_refused_and_never_runs(tmp_path, capsys, flavour, suffix):
    marker = tmp_path / "ran.txt"
    path = tmp_path / f"hostile{suffix}"
    _lambda_model(flavour, marker).save(path)
    marker.unlink(missing_ok=True)  # building the model in this test ran it once
    assert main(["convert", str(path), "--mode", "float32", "-o", str(tmp_path / "m.tflite")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "Traceback" not in err
    assert "Lambda layer holding Python code" in err
    assert not marker.exists()
    assert not (tmp_path / "m.tflite").exists()


def test_a_trusted_file_loads_with_safe_mode_off(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "trusted.h5"
    _lambda_model("tf_keras", marker).save(path)
    assert load_model(path, safe_mode=False).model.output_shape == (None, 2)


def test_the_private_safe_mode_scope_is_still_where_tfedge_reads_it():
    """tfedge's one use of tf_keras's private SafeModeScope: an upgrade that moves it fails here."""
    from tfedge.core.backend import keras2_safe_mode

    with keras2_safe_mode():
        from tf_keras.src.saving import serialization_lib

        assert serialization_lib.in_safe_mode() is True
