"""The scripts' shared command-line behaviour: one-line usage errors, pasteable hints."""

import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from vader_tf import cli
from vader_tf.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_error_the_project_raises_on_bad_input_is_one_line(capsys):
    def main(argv):
        sources.parse_data_spec("photos:/x")

    with pytest.raises(SystemExit) as exit_info:
        cli.report_user_errors(main, script_path="/somewhere/pretrain.py")([])
    assert exit_info.value.code == cli.USAGE_EXIT_CODE
    assert capsys.readouterr().err == (
        "pretrain.py: error: Unrecognised data spec 'photos:/x': expected 'samples', "
        "'folder:PATH' or 'tfds:NAME[:SPLIT]'.\n"
    )


def test_an_error_raised_in_a_module_beside_the_script_is_one_line(tmp_path, capsys):
    """`reproduce_small.py`'s settings are validated in `small_study.py`, beside it."""
    study = tmp_path / "study_beside.py"
    study.write_text("def validate():\n    raise ValueError('--seeds must name at least one seed.')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import study_beside
    finally:
        sys.path.remove(str(tmp_path))

    with pytest.raises(SystemExit) as exit_info:
        cli.report_user_errors(
            lambda argv: study_beside.validate(), script_path=str(tmp_path / "reproduce.py")
        )([])
    assert exit_info.value.code == cli.USAGE_EXIT_CODE
    assert capsys.readouterr().err == "reproduce.py: error: --seeds must name at least one seed.\n"
    with pytest.raises(ValueError):  # The same module seen from a script elsewhere.
        cli.report_user_errors(
            lambda argv: study_beside.validate(), script_path="/somewhere/reproduce.py"
        )([])


def test_the_same_error_types_raised_elsewhere_keep_their_traceback():
    def main(argv):
        np.zeros(3).reshape(2)  # A ValueError raised inside NumPy: a bug, not bad input.

    with pytest.raises(ValueError, match="reshape"):
        cli.report_user_errors(main, script_path="/somewhere/pretrain.py")([])


def test_other_exceptions_keep_their_traceback():
    def main(argv):
        raise KeyError("unexpected")

    with pytest.raises(KeyError):
        cli.report_user_errors(main, script_path=__file__)([])


def test_ctrl_c_outside_the_training_loop_is_one_line_and_status_130(capsys):
    # E.g. while the data are read: nothing to checkpoint yet (the loop's own handler,
    # tests/training/test_preemption.py, covers Ctrl-C during training).
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.report_user_errors(main, script_path="/somewhere/pretrain.py")([])
    assert exit_info.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err == "pretrain.py: interrupted.\n"


def test_hint_commands_use_this_interpreter_and_can_be_pasted(monkeypatch):
    monkeypatch.setenv("PATH", "")  # The command is not installed on PATH.
    command = cli.command("vader-export", model_dir="runs/my run", export_dir="e")
    words = shlex.split(command)
    assert words[:3] == [sys.executable, "-m", "vader_tf.scripts.export_saved_model"]
    assert words[3:] == ["--model_dir=runs/my run", "--export_dir=e"]


def _run_script(script, *args, cwd=None):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return result.returncode, result.stderr.strip().splitlines()


def test_unknown_tfds_dataset_is_one_short_line(tmp_path):
    status, lines = _run_script(
        "experiments/pretrain.py", "--data=tfds:mnistt", f"--model_dir={tmp_path / 'run'}"
    )
    assert status == cli.USAGE_EXIT_CODE
    assert lines[-1] == "pretrain.py: error: 'mnistt' is not a TFDS dataset; did you mean 'mnist'?"
    assert not any("Traceback" in line for line in lines) and len(lines) < 10


def test_export_scripts_report_bad_paths_in_one_line(tmp_path):
    status, lines = _run_script(
        "export/export_saved_model.py", f"--model_dir={tmp_path / 'nowhere'}", "--export_dir=e"
    )
    assert status == cli.USAGE_EXIT_CODE
    assert lines[-1].startswith("export_saved_model.py: error: No run directory or .keras file at")
    assert not any("Traceback" in line for line in lines)

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "encoder_config.json").write_text("{}")
    status, lines = _run_script(
        "export/export_tflite.py", f"--saved_model={run}", "--output=x.tflite", cwd=tmp_path
    )
    assert status == cli.USAGE_EXIT_CODE
    assert lines[-1].startswith(
        f"export_tflite.py: error: {str(run)!r} is a pretraining run directory, not a "
        f"SavedModel; export it first: {shlex.quote(sys.executable)} "
    )
    assert not any("Traceback" in line for line in lines)
