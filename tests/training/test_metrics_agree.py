"""The progress bar, the history (which the script's summary line prints) and TensorBoard
show the same number for the same step: the mean over that logging interval (issue 21,
item 4). Keras' progress bar would show a running mean over the whole run instead."""

import glob
import re

import numpy as np
import tensorflow as tf

from tests.training import helpers
from vader_tf.training.pretrain import pretrain


def _tensorboard_scalars(model_dir, tag):
    values = {}
    for path in glob.glob(f"{model_dir}/tensorboard/events.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def _progbar_values(output, name, target):
    """`{step: text shown for name}` from a verbose=1 progress bar's output."""
    shown = {}
    for frame in re.split(r"[\r\n]", output):
        step = re.search(rf"(\d+)/{target}", frame)
        value = re.search(rf"\b{re.escape(name)}: (\S+)", frame)
        if step and value:
            shown[int(step.group(1))] = value.group(1)
    return shown


def _progbar_text(value):
    # How keras.utils.Progbar prints a value.
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


def test_progress_bar_history_and_tensorboard_show_the_interval_mean(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    helpers.write_smooth_photos(photos, 6)
    config = helpers.small_config(tmp_path / "run", photos, train_steps=4, verbose=1)
    _, history = pretrain(config)
    output = capsys.readouterr().out
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for name in ("loss", "accuracy", "positive_similarity"):
        per_step = {h["step"]: h[name] for h in history}
        # The losses differ from step to step, so a running mean would show otherwise.
        if name == "loss":
            assert len(set(per_step.values())) == 4
        board = _tensorboard_scalars(tmp_path / "run", name)
        assert sorted(board) == [1, 2, 3, 4]
        for step, value in per_step.items():
            np.testing.assert_allclose(board[step], value, rtol=1e-6)
        shown = _progbar_values(output, name, 4)
        assert shown, output[-2000:]
        for step, text in shown.items():
            assert text == _progbar_text(per_step[step]), (name, step, text, per_step)
        assert 4 in shown
