"""Training steps under mixed precision policies stay finite and update the network."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import build_small_model, run_steps, synthetic_batch


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"], indirect=True)
def test_vader_step_under_mixed_precision(policy):
    model = build_small_model("vader")
    assert model.query_model.compute_dtype == policy.split("_")[1]
    # The embedding and the queue stay float32 whatever the policy.
    assert model.query_model.output.dtype == "float32"
    assert model.queue.dtype == "float32"
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.numpy().copy() for w in model.query_model.trainable_weights]
    metrics = run_steps(model, tf.distribute.get_strategy(), [synthetic_batch(4)])[0]
    assert np.isfinite(metrics["loss"])
    after = [w.numpy() for w in model.query_model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
