"""No command writes over one of its inputs; outputs are written whole; OS errors are Error lines."""

import errno
import os
import stat

import pytest

from tfedge.cli import main, os_error
from tfedge.core.errors import InputFileError
from tfedge.core.files import refuse_overwrite, write_atomically


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Stand-in input files (the refusal comes before anything reads them) in the cwd."""
    monkeypatch.chdir(tmp_path)
    for name in ("model.keras", "a.tflite", "b.tflite", "data.npz", "results.json", "r.yaml"):
        (tmp_path / name).write_bytes(f"original {name}".encode())
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "1.png").write_bytes(b"png")
    os.symlink("model.keras", tmp_path / "link.keras")
    os.link(tmp_path / "a.tflite", tmp_path / "hard.tflite")
    return tmp_path


def _snapshot(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


CASES = [
    ["convert", "model.keras", "--calib", "data.npz", "-o", "model.keras"],
    ["convert", "model.keras", "--calib", "data.npz", "-o", "./link.keras"],
    ["convert", "link.keras", "--calib", "data.npz", "-o", "../{dir}/model.keras"],
    ["convert", "model.keras", "--calib", "data.npz", "-o", "data.npz"],
    ["convert", "model.keras", "--calib", "images", "-o", "images/cat/m.tflite"],
    ["analyze", "model.keras", "--calib", "data.npz", "--json", "data.npz"],
    ["analyze", "model.keras", "--calib", "data.npz", "--explorer", "model.keras"],
    ["analyze", "model.keras", "--calib", "data.npz", "--fix", "-o", "link.keras"],
    ["analyze", "model.keras", "--calib", "data.npz", "--json", "j.json", "--explorer", "j.json"],
    ["compare", "a.tflite", "b.tflite", "--json", "b.tflite"],
    ["compare", "a.tflite", "b.tflite", "--json", "hard.tflite"],
    ["compare", "a.tflite", "b.tflite", "--data", "data.npz", "--json", "data.npz"],
    ["report", "results.json", "-o", "results.json"],
    ["bench", "a.tflite", "--data", "data.npz", "--json", "data.npz"],
    ["bench", "a.tflite", "b.tflite", "--html", "b.tflite"],
    ["bench", "a.tflite", "--json", "results.json", "--html", "results.json"],
    ["optimize", "model.keras", "--train", "data.npz", "--val", "data.npz", "--qat", "-o", "."],
    ["optimize", "a.tflite", "--train", "data.npz", "--val", "data.npz", "--qat", "-o", "r.yaml"],
    ["demo", "-o", "model.keras"],
    ["optimize", "model.keras", "--train", "data.npz", "--val", "data.npz", "--auto"]
    + ["--tolerance", "0.01", "-o", "model.keras"],
]


@pytest.mark.parametrize("argv", CASES, ids=lambda argv: " ".join(argv))
def test_an_output_that_is_an_input_is_refused_before_any_work(inputs, argv, capsys):
    before = _snapshot(inputs)
    argv = [arg.replace("{dir}", inputs.name) for arg in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Error: ") and "Traceback" not in "\n".join(err)
    assert len([line for line in err if line.startswith("Error:")]) == 1
    assert _snapshot(inputs) == before


def test_optimize_refuses_an_input_inside_its_checkpoints(inputs, capsys):
    (inputs / "out" / "checkpoints").mkdir(parents=True)
    (inputs / "out" / "checkpoints" / "train.npz").write_bytes(b"x")
    argv = ["optimize", "model.keras", "--train", "out/checkpoints/train.npz", "--val"]
    assert main([*argv, "data.npz", "--qat", "-o", "out"]) == 1
    assert "which -o rewrites" in capsys.readouterr().err


@pytest.mark.parametrize(
    "output, message",
    [("images", "is a folder; expected a file"), ("data.npz/m.tflite", "is a file, not a folder")],
)
def test_an_output_path_that_cannot_be_a_file_is_an_error_line(inputs, output, message, capsys):
    assert main(["convert", "model.keras", "-o", output]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_an_unwritable_folder_is_refused_before_work(inputs, capsys):
    (inputs / "ro").mkdir()
    os.chmod(inputs / "ro", stat.S_IRUSR | stat.S_IXUSR)
    assert main(["convert", "model.keras", "-o", "ro/m.tflite"]) == 1
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "code, hint",
    [
        (errno.EACCES, "permissions"),
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "disk is full"),
        (errno.EISDIR, "is a folder"),
        (errno.ENOTDIR, "is a file, not a folder"),
    ],
)
def test_os_errors_become_one_line_with_a_hint(code, hint):
    message, text = os_error(OSError(code, os.strerror(code), "/out/m.tflite"))
    assert message == f"cannot use /out/m.tflite: {os.strerror(code)}"
    assert hint in text


def test_write_atomically_replaces_whole_and_keeps_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_atomically(path, "first")
    write_atomically(path, b"second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_refuse_overwrite_passes_distinct_paths(tmp_path):
    (tmp_path / "in.npz").write_bytes(b"x")
    refuse_overwrite({"-o": tmp_path / "out.tflite"}, {"--calib": tmp_path / "in.npz"})
    with pytest.raises(InputFileError, match="is the input --data"):
        refuse_overwrite({"-o": tmp_path / "in.npz"}, {"--data": str(tmp_path / "*.npz")})


def test_an_error_message_is_always_one_line_of_readable_length(capsys):
    from tfedge.cli import _print_error

    _print_error("while parsing\n  in line 1\n" + "x" * 5000, "a hint")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("Error: while parsing in line 1 xxx") and err[0].endswith(" ...")
    assert len(err[0]) < 1100 and err[1] == "Hint: a hint"


def test_every_file_a_data_set_writes_goes_through_the_one_writer(tmp_path):
    import numpy as np

    from tfedge.core.data import Dataset, load_data
    from tfedge.core.streams import write_npz

    mask = os.umask(0)
    os.umask(mask)
    x, y = np.ones((3, 2), np.float32), np.arange(3)
    saved = Dataset(x, y).save(tmp_path / "saved.npz")
    streamed = write_npz(tmp_path / "streamed.npz", [(x, y)], 3, (2,))
    for path in (saved, streamed):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
        assert (load_data(str(path)).y == y).all()
    with pytest.raises(Exception, match="expected 4"):
        write_npz(tmp_path / "short.npz", [(x, y)], 4, (2,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.npz", "streamed.npz"]
