"""Target profiles on real conversions: the EdgeTPU profile, user profiles, refusals."""

import pytest

from tfedge.converters import convert
from tfedge.converters.targets import builtin_targets, load_target
from tfedge.core.errors import ConversionError
from tfedge.core.inspector import inspect_model


def test_builtin_profiles():
    assert {"edgetpu", "arm"} <= set(builtin_targets())
    assert load_target("edgetpu").resolve(None, None) == ("int8", "uint8")
    assert load_target("edgetpu").resolve("int8", "int8") == ("int8", "int8")


@pytest.mark.parametrize("io", [None, "int8"])
def test_edgetpu_target_gives_a_compatible_int8_model(io, trained_digits_cnn, digits):
    blob = convert(trained_digits_cnn, calib=digits[0], calib_samples=50, target="edgetpu", io=io)
    info = inspect_model(blob)
    assert info["fully_integer"] and info["static_shapes"]
    assert info["input"][0]["dtype"] == (io or "uint8")
    assert info["edgetpu"]["compatible"] and info["edgetpu"]["cpu_ops"] == 0


@pytest.mark.parametrize(
    ("mode", "io", "needle", "option"),
    [
        ("float16", None, "needs mode int8", "mode"),
        ("int8", "float32", "input/output type float32", "io"),
    ],
)
def test_edgetpu_target_refuses_other_modes(mode, io, needle, option, trained_digits_cnn, digits):
    with pytest.raises(ConversionError, match=needle) as excinfo:
        convert(trained_digits_cnn, mode=mode, io=io, calib=digits[0], target="edgetpu")
    assert excinfo.value.option == option  # the command line names the flag: --mode, --io


def test_edgetpu_target_names_the_operator_it_cannot_run(digits):
    from tfedge.core.backend import keras

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(10)(x)
    x = keras.layers.Activation("elu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    with pytest.raises(ConversionError, match="ELU"):
        convert(model, calib=digits[0], calib_samples=20, target="edgetpu")


def test_user_profile_with_an_operator_list(tmp_path, trained_digits_cnn, digits):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        "name: tiny\nmode: int8\nio: int8\nsupported_ops: [CONV_2D, FULLY_CONNECTED]\n"
    )
    with pytest.raises(ConversionError, match="MAX_POOL_2D"):
        convert(trained_digits_cnn, calib=digits[0], calib_samples=20, target=str(profile))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "unknown target"),
        ("name: x\ncolour: red\n", "unknown keys"),
        ("[1, 2", "not valid YAML: line 1, column 6: expected ',' or ']'"),
        ("mode: int3\n", "mode 'int3' is not one of int8"),
        ("edgetpu: yes please\n", "edgetpu is 'yes please'; expected true or false"),
        ("allowed_io: [uint8, 7]\n", "allowed_io is .*expected a list of input/output types"),
        ("io: uint9\n", "input/output type 'uint9' is not one of"),
        ("supported_ops: CONV_2D\n", "supported_ops is 'CONV_2D'; expected a list"),
        ("# " + "x" * 70000 + "\n", "a target profile is a few lines"),
    ],
)
def test_bad_profiles(content, needle, tmp_path):
    target = "no-such-target"
    if content is not None:
        target = tmp_path / "p.yaml"
        target.write_text(content)
    with pytest.raises(ConversionError, match=needle):
        load_target(target)


def test_cli_keeps_the_uncompiled_model_when_the_compiler_is_absent(
    capsys, digits_cnn_path, train_npz, tmp_path
):
    import shutil

    from tfedge.cli import main

    if shutil.which("edgetpu_compiler"):
        pytest.skip("edgetpu_compiler is installed here: this test covers the machine without it")
    out = tmp_path / "m.tflite"
    assert (
        main(
            [
                "convert",
                str(digits_cnn_path),
                "--calib",
                str(train_npz),
                "--target",
                "edgetpu",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert out.is_file() and "edgetpu_compiler" in printed and "apt" in printed
