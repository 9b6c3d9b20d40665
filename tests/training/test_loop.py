"""The pretraining loop: resume, SIGKILL and restart, non-finite loss, summaries."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from vader_tf import losses
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.training import loop
from tests.training import helpers
from tests.training.helpers import write_smooth_photos
from vader_tf.training.pretrain import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_smooth_photos(folder, 6)
    return str(folder)


def small_config(model_dir, data, **overrides):
    return helpers.small_config(model_dir, data, **{"deterministic": True, **overrides})


def _encoder_weights(model_dir):
    encoder = load_encoder(str(model_dir))
    return [w.numpy() for w in encoder.weights]


def _assert_weights_close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


class Crash(Exception):
    pass


def test_resume_equals_uninterrupted_run(tmp_path, photo_folder, monkeypatch):
    _, history = pretrain(small_config(tmp_path / "straight", photo_folder))
    assert [h["step"] for h in history] == [1, 2, 3, 4]

    real_save = tf.train.CheckpointManager.save

    def save_then_crash(manager, *args, **kwargs):
        path = real_save(manager, *args, **kwargs)
        raise Crash(path)

    with monkeypatch.context() as patch:
        patch.setattr(tf.train.CheckpointManager, "save", save_then_crash)
        with pytest.raises(Crash, match="ckpt-2"):
            pretrain(small_config(tmp_path / "resumed", photo_folder))
    model, history = pretrain(small_config(tmp_path / "resumed", photo_folder))
    assert [h["step"] for h in history] == [3, 4]
    assert int(model.optimizer.iterations.numpy()) == 4
    _assert_weights_close(_encoder_weights(tmp_path / "straight"), _encoder_weights(tmp_path / "resumed"))
    # The queue and its pointer were restored too, not re-initialised.
    assert int(model.queue_pointer.numpy()) == (4 * 4 * 4) % 64
    checkpoints = sorted(glob.glob(str(tmp_path / "resumed" / "checkpoints" / "ckpt-*.index")))
    assert [os.path.basename(c) for c in checkpoints] == ["ckpt-2.index", "ckpt-4.index"]
    assert glob.glob(str(tmp_path / "straight" / "tensorboard" / "events.*"))
    assert os.path.exists(tmp_path / "straight" / "encoder.keras")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, photo_folder, monkeypatch):
    pretrain(small_config(tmp_path, photo_folder, train_steps=2))
    good = _encoder_weights(tmp_path)
    # Resuming with more steps: the first loop call after step 2 produces NaN.

    real_info_nce = losses.info_nce

    def nan_rows(*args, **kwargs):
        rows = real_info_nce(*args, **kwargs)
        return {**rows, "loss": rows["loss"] * float("nan")}

    monkeypatch.setattr(losses, "info_nce", nan_rows)
    with pytest.raises(loop.NonFiniteLossError, match="ckpt-2"):
        pretrain(small_config(tmp_path, photo_folder, train_steps=4))
    assert RunDir(str(tmp_path)).latest_checkpoint().endswith("ckpt-2")
    _assert_weights_close(good, _encoder_weights(tmp_path))


def _pretrain_command(model_dir, data, train_steps):
    return [
        sys.executable, os.path.join(REPO, "experiments", "pretrain.py"),
        f"--model_dir={model_dir}", f"--data=folder:{data}", "--image_size=64",
        "--batch_size=4", "--num_points=8", "--queue_size=64", "--queue_points_per_image=4",
        "--decoder_channels=16", "--embedding_dim=8", f"--train_steps={train_steps}",
        "--checkpoint_every=2", "--log_every=1", "--verbose=0", "--deterministic",
    ]


def test_sigkill_then_restart_continues_from_last_checkpoint(tmp_path, photo_folder):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(_pretrain_command(tmp_path / "straight", photo_folder, 6), check=True, env=env, capture_output=True)

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        _pretrain_command(killed_dir, photo_folder, 6), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not RunDir(str(killed_dir)).latest_checkpoint() and time.time() < deadline:
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = RunDir(str(killed_dir)).latest_checkpoint()
    assert interrupted_at is not None and not interrupted_at.endswith("ckpt-6")

    restarted = subprocess.run(
        _pretrain_command(killed_dir, photo_folder, 6), env=env, capture_output=True, text=True
    )
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "Resumed from" in restarted.stderr
    assert RunDir(str(killed_dir)).latest_checkpoint().endswith("ckpt-6")
    _assert_weights_close(_encoder_weights(tmp_path / "straight"), _encoder_weights(killed_dir))
