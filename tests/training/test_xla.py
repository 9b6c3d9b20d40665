"""`--jit_compile`: the XLA-compiled train step computes what the default graph step does,
and the pretraining loop compiles its step with XLA when asked."""

import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import (
    build_small_model,
    small_config,
    synthetic_batch,
    write_smooth_photos,
)


def _fixed_permutation(self, global_batch_size, view_index):
    """A BN-shuffle permutation both compilers agree on (x -> 3x + view mod n, n = 8)."""
    return (tf.range(global_batch_size) * 3 + view_index) % global_batch_size


def _one_step(jit_compile, method):
    model = build_small_model(method, queue_size=64, bn_groups=2, shuffle_bn=True)
    step = tf.function(model.train_step, jit_compile=jit_compile)
    step(synthetic_batch(batch_size=8, num_points=8, invalid=(2,)))
    metrics = {m.name: float(m.result()) for m in model.metrics}
    return model, metrics


@pytest.mark.parametrize("method", ["vader", "moco", "densecl"])
def test_one_xla_step_equals_one_graph_step(method, monkeypatch):
    """Same model and batch (2 BN groups of 4, shuffled keys, an invalid pair): loss,
    updated query and key weights, moving statistics and queue agree to float32 round-off
    (XLA's kernels differ from oneDNN's, so not bitwise; batch norm over 4 small images
    amplifies that drift, hence test_distributed's tolerance: updates are ~1e-2).

    The BN-shuffle permutation is fixed here: XLA turns the same stateless seed into other
    random numbers than TensorFlow's kernels (tf2xla's key/counter derivation; even with
    alg="philox" named), so an XLA run draws other, equally random, permutations."""
    from vader_tf.training.momentum_contrast import MomentumContrast

    monkeypatch.setattr(MomentumContrast, "_key_permutation", _fixed_permutation)
    graph_model, graph_metrics = _one_step(False, method)
    xla_model, xla_metrics = _one_step(True, method)
    assert xla_metrics["loss"] == pytest.approx(graph_metrics["loss"], rel=1e-5)
    pairs = list(zip(graph_model.query_model.weights, xla_model.query_model.weights))
    pairs += list(zip(graph_model.key_model.weights, xla_model.key_model.weights))
    for graph_weight, xla_weight in pairs:
        np.testing.assert_allclose(
            xla_weight.numpy(),
            graph_weight.numpy(),
            rtol=1e-3,
            atol=3e-4,
            err_msg=graph_weight.path,
        )
    np.testing.assert_allclose(xla_model.queue.numpy(), graph_model.queue.numpy(), atol=1e-5)
    # The step moved the query network, so the comparison above compares updated weights.
    fresh = build_small_model(method, queue_size=64, bn_groups=2, shuffle_bn=True)
    moved = [
        not np.allclose(a.numpy(), b.numpy())
        for a, b in zip(
            fresh.query_model.trainable_weights, xla_model.query_model.trainable_weights
        )
    ]
    assert any(moved)


def test_pretrain_compiles_the_step_with_xla_when_asked(tmp_path, monkeypatch):
    from vader_tf.training import loop
    from vader_tf.training.pretrain import pretrain

    photos = tmp_path / "photos"
    photos.mkdir()
    write_smooth_photos(photos, 4)
    real_function = tf.function
    jit_flags = []

    def recording_function(*args, **kwargs):
        jit_flags.append(kwargs.get("jit_compile"))
        return real_function(*args, **kwargs)

    monkeypatch.setattr(loop.tf, "function", recording_function)
    config = small_config(tmp_path / "run", photos, train_steps=1, jit_compile=True)
    _, history = pretrain(config)
    assert True in jit_flags
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


def test_jit_compile_with_two_replicas_is_refused_before_anything_is_written(tmp_path):
    from tests.training.helpers import two_replicas
    from vader_tf.training.pretrain import pretrain

    photos = tmp_path / "photos"
    photos.mkdir()
    write_smooth_photos(photos, 4)
    config = small_config(tmp_path / "run", photos, jit_compile=True)
    with pytest.raises(ValueError, match="single-replica step; this strategy has 2 replicas"):
        pretrain(config, strategy=two_replicas())
    assert not (tmp_path / "run").exists()
