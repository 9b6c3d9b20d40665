"""A run directory is never damaged: bad settings, resumes with other settings, leftovers."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.training import helpers
from vader_tf.run_dir import RunDir
from vader_tf.training.pretrain import RunConfigMismatchError, pretrain


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A two-step run directory (checkpoint at step 2) and its data folder."""
    photos = tmp_path_factory.mktemp("photos")
    helpers.write_smooth_photos(photos, 4)
    model_dir = tmp_path_factory.mktemp("run") / "run"
    pretrain(helpers.small_config(model_dir, photos, train_steps=2))
    return model_dir, photos


@pytest.fixture
def run_copy(finished_run, tmp_path):
    model_dir, photos = finished_run
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    return copy, photos


def _snapshot(model_dir):
    """Every file of `model_dir` with its content."""
    files = {}
    for root, _, names in os.walk(model_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, model_dir)] = f.read()
    return files


def test_invalid_backbone_writes_nothing(run_copy):
    model_dir, photos = run_copy
    before = _snapshot(model_dir)
    with pytest.raises(ValueError, match="backbone must be one of .*'resnet7'"):
        pretrain(helpers.small_config(model_dir, photos, backbone="resnet7", train_steps=4))
    assert _snapshot(model_dir) == before


def test_resume_with_other_model_settings_is_refused_naming_each_field(run_copy):
    model_dir, photos = run_copy
    before = _snapshot(model_dir)
    changed = helpers.small_config(
        model_dir, photos, backbone="resnet34", method="moco", symmetric_loss=False, train_steps=4
    )
    with pytest.raises(RunConfigMismatchError) as raised:
        pretrain(changed)
    message = str(raised.value)
    assert "\n" not in message
    assert "this run was made with backbone=resnet18, method=vader, symmetric_loss=True " in message
    assert "train_steps" in message  # Named among what may change.
    assert _snapshot(model_dir) == before


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # Names no running process any more.


def test_resume_with_safe_changes_continues_and_removes_leftovers_of_a_kill(run_copy, caplog):
    model_dir, photos = run_copy
    # What a kill during `CheckpointManager.save` of step 4 and during an atomic JSON
    # write leave behind.
    staging = model_dir / "checkpoints" / "ckpt-4_temp"
    staging.mkdir()
    (staging / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    stale_json = model_dir / f"{RunDir.RUN_CONFIG}.tmp-{_dead_pid()}"
    stale_json.write_text("{")
    with caplog.at_level("WARNING"):
        _, history = pretrain(
            helpers.small_config(
                model_dir, photos, train_steps=3, log_every=3, checkpoint_every=3,
                keep_checkpoints=5, cache_decoded_mb=0,
            )
        )
    assert [h["step"] for h in history] == [3]
    assert RunDir(str(model_dir)).read_run_config()["train_steps"] == 3
    assert RunDir(str(model_dir)).latest_checkpoint().endswith("ckpt-3")
    assert not staging.exists() and not stale_json.exists()
    assert str(staging) in caplog.text and "killed run" in caplog.text
