"""Every output path is checked for writability before any work, in one line (exit 2)."""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from vader_tf import cli, storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("in the way")
    return str(path)


def _refusal(check, path, flag="model_dir"):
    with pytest.raises(ValueError) as error:
        check(path, flag)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--{flag}={path} cannot be written: ")
    return message


def test_directories_that_cannot_be_written_are_named_with_the_reason(a_file):
    # Tests run as root: a regular file in the way and /proc fail for root too.
    assert _refusal(storage.check_writable_dir, a_file).endswith(
        f"{a_file} is a file, not a directory."
    )
    assert _refusal(storage.check_writable_dir, f"{a_file}/run/deeper").endswith(
        f"{a_file} is a file, not a directory."
    )
    assert "no file can be created in /proc (" in _refusal(storage.check_writable_dir, "/proc/run")
    assert _refusal(storage.check_writable_file, f"{a_file}/x.json", "output").endswith(
        f"{a_file} is a file, not a directory."
    )
    assert _refusal(storage.check_writable_file, os.path.dirname(a_file), "output").endswith(
        "it is a directory."
    )


def test_writable_directories_pass_and_nothing_is_left_behind(tmp_path):
    storage.check_writable_dir(str(tmp_path / "new" / "run"), "model_dir")
    storage.check_writable_dir(str(tmp_path), "model_dir")
    storage.check_writable_file(str(tmp_path / "results" / "x.json"), "output")
    assert os.listdir(tmp_path) == []
    storage.check_writable_dir("ram://output_paths/run", "model_dir")
    assert not tf.io.gfile.exists("ram://output_paths/run") or not tf.io.gfile.listdir(
        "ram://output_paths/run"
    )


def _run(script, *args, cwd=None):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
    )
    # TensorFlow's C++ start-up logs ("I0000 ... oneDNN ...") are not ours.
    lines = [
        line for line in result.stderr.splitlines()
        if line.strip() and not re.match(r"([IW]\d{4} |WARNING: All log messages before)", line)
    ]
    return result.returncode, lines


@pytest.mark.parametrize(
    "script, flags, error",
    [
        # The data (a missing folder) would fail first if it were read before the check.
        ("experiments/pretrain.py", ["--model_dir={file}", "--data=folder:/missing"],
         "--model_dir={file} cannot be written: {file} is a file, not a directory."),
        ("experiments/pretrain.py", ["--model_dir=/proc/run", "--data=folder:/missing"],
         "--model_dir=/proc/run cannot be written: no file can be created in /proc"),
        # The encoder (missing) would fail first if it were loaded before the check.
        ("export/export_saved_model.py", ["--encoder=/missing.keras", "--export_dir={file}/e"],
         "--export_dir={file}/e cannot be written: {file} is a file, not a directory."),
        ("export/export_tflite.py", ["--saved_model=/missing", "--output=/proc/x.tflite"],
         "--output=/proc/x.tflite cannot be written: no file can be created in /proc"),
        ("experiments/eval_linear_probe.py",
         ["--encoder=random:resnet18", "--data_root=/missing", "--output={file}/x.json"],
         "--output={file}/x.json cannot be written: {file} is a file, not a directory."),
    ],
)
def test_scripts_check_output_paths_first_in_one_line(a_file, script, flags, error):
    status, lines = _run(script, *(flag.format(file=a_file) for flag in flags))
    name = os.path.basename(script)
    assert status == cli.USAGE_EXIT_CODE, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: error: {error.format(file=a_file)}"), lines
