"""A short VADeR run on real photos (BSDS500) lowers the loss."""

import os

import numpy as np
import pytest

from tests.training.helpers import small_config
from vader_tf.training.pretrain import pretrain


def test_loss_goes_down_on_bsds500(tmp_path):
    shared = os.environ.get("VADER_SHARED_DATA")
    if not shared:
        pytest.skip("VADER_SHARED_DATA is not set")
    config = small_config(
        tmp_path,
        os.path.join(shared, "bsds500", "images"),
        batch_size=8,
        num_points=32,
        queue_size=256,
        queue_points_per_image=8,
        decoder_channels=128,
        embedding_dim=128,
        base_learning_rate=1.0,
        train_steps=60,
        log_every=5,
        checkpoint_every=60,
    )
    _, history = pretrain(config)
    losses = {h["step"]: h["loss"] for h in history}
    # The first steps replace the random initial queue (256 keys, 64 per step) with real
    # keys, which raises the loss; learning shows after that, against a full real queue.
    after_queue_filled = np.mean([losses[s] for s in (10, 15, 20)])
    end = np.mean([losses[s] for s in (45, 50, 55, 60)])
    assert end < 0.95 * after_queue_filled, losses
