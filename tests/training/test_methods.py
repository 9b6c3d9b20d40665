"""Methods are registered by name: pretrain builds them through the registry alone; a
method may declare several contrastive terms, each with its own queue."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training import reference
from tests.training.helpers import run_steps, small_config, synthetic_batch
from vader_tf.models import build_encoder
from vader_tf.training import methods
from vader_tf.training.densecl import DenseCL
from vader_tf.training.moco import MoCo
from vader_tf.training.momentum_contrast import ContrastiveTerm, MomentumContrast, TermSpec
from vader_tf.training.optimizers import TorchSGD
from vader_tf.training.pretrain import PretrainConfig, build_model
from vader_tf.training.vader import VADeR


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))
    return methods


def test_built_in_methods_are_registered():
    assert methods.registered_methods() == ("densecl", "moco", "vader")
    assert methods.get_method("vader") is VADeR and methods.get_method("moco") is MoCo
    assert methods.get_method("densecl") is DenseCL


def test_unknown_method_is_a_clear_error_listing_the_registered_ones(tmp_path):
    with pytest.raises(
        ValueError, match="Unknown method 'simclr'; registered methods: densecl, moco, vader"
    ):
        methods.get_method("simclr")
    with pytest.raises(ValueError, match=r"must be one of densecl, moco, vader, got 'simclr'"):
        PretrainConfig(method="simclr").validate()


def test_registering_twice_or_a_non_method_is_refused(registry):
    with pytest.raises(ValueError, match="already registered by VADeR"):
        registry.register_method("vader")(MoCo)
    with pytest.raises(TypeError, match="MomentumContrast subclass"):
        registry.register_method("plain")(object)


def test_a_toy_method_in_its_own_class_is_built_by_pretrain(registry, tmp_path):
    @registry.register_method("toy")
    class ToyMethod(MomentumContrast):
        """Image-level rows: the mean of the encoder's unit features, re-normalised."""

        def __init__(self, encoder, **kwargs):
            from vader_tf.models.encoder import DenseEncoder

            key_encoder = DenseEncoder.from_config({**encoder.get_config(), "name": "key"})
            super().__init__(encoder, key_encoder, encoder.embedding_dim, **kwargs)
            self.encoder = encoder

        @classmethod
        def from_pretrain_config(cls, encoder, config, **common):
            return cls(encoder, **common)

        def contrastive_rows(self, data, query_outputs, key_outputs):
            def pooled(maps):
                return tf.math.l2_normalize(tf.reduce_mean(maps, axis=[1, 2]), axis=-1)

            q1, q2 = (pooled(m) for m in query_outputs)
            k1, k2 = (pooled(m) for m in key_outputs)
            valid = tf.cast(data["valid"], tf.float32)
            return (
                ContrastiveTerm(
                    "contrast", tf.concat([q1, q2], 0), tf.concat([k2, k1], 0),
                    tf.concat([valid, valid], 0), k2, tf.cast(data["valid"], tf.bool),
                ),
            )

    config = small_config(tmp_path / "run", tmp_path, method="toy", bn_groups=1)
    config.validate()
    assert config.pair_min_overlap is None  # The toy method does not ask for overlap.
    model = build_model(config)
    assert isinstance(model, ToyMethod) and model.encoder.embedding_dim == 8
    assert model.queue.shape == (config.queue_size, 8)
    assert model.optimizer is not None  # compiled by build_model


def test_a_method_that_does_not_set_its_encoder_is_refused(registry, tmp_path):
    @registry.register_method("no_encoder")
    class NoEncoder(MomentumContrast):
        @classmethod
        def from_pretrain_config(cls, encoder, config, **common):
            return cls(encoder, encoder.__class__.from_config(encoder.get_config()), 8, **common)

    with pytest.raises(TypeError, match="'no_encoder' must set `encoder`"):
        build_model(small_config(tmp_path / "run", tmp_path, method="no_encoder"))


class TwoTermToy(MomentumContrast):
    """Two terms on image rows (the unit mean of the dense features): `all` counts every
    pair and enqueues every key; `valid` (weight 0.25) only the valid pairs'."""

    def __init__(self, encoder, **kwargs):
        from vader_tf.models.encoder import DenseEncoder

        key_encoder = DenseEncoder.from_config({**encoder.get_config(), "name": "key"})
        dim = encoder.embedding_dim
        terms = (TermSpec("all", 8, dim, 0.75), TermSpec("valid", 6, dim, 0.25))
        super().__init__(encoder, key_encoder, dim, terms=terms, **kwargs)
        self.encoder = encoder

    def contrastive_rows(self, data, query_outputs, key_outputs):
        def pooled(maps):
            return tf.math.l2_normalize(tf.reduce_mean(maps, axis=[1, 2]), axis=-1)

        queries = tf.concat([pooled(query_outputs[0]), pooled(query_outputs[1])], 0)
        keys = tf.concat([pooled(key_outputs[1]), pooled(key_outputs[0])], 0)
        valid = tf.cast(data["valid"], tf.float32)
        every = tf.ones_like(valid)
        k2 = pooled(key_outputs[1])
        return (
            ContrastiveTerm("all", queries, keys, tf.concat([every, every], 0), k2, every > 0),
            ContrastiveTerm("valid", queries, keys, tf.concat([valid, valid], 0), k2, valid > 0),
        )


def test_each_term_has_its_own_queue_row_weights_mask_and_loss_weight():
    keras.utils.set_random_seed(0)
    encoder = build_encoder("resnet18", decoder_channels=16, head_hidden_dim=16, embedding_dim=8)
    model = TwoTermToy(encoder, temperature=0.2, momentum=0.9, bn_groups=1, shuffle_bn=False)
    # Plain SGD at rate 1: the update is minus the gradient.
    model.compile(optimizer=TorchSGD(1.0))
    batch = synthetic_batch(4, invalid=(1,))
    queues = [model.queue.numpy().copy(), model.valid_queue.numpy().copy()]
    variables = model.query_model.trainable_variables
    before = [v.numpy().copy() for v in variables]

    def pooled(network, view):
        return tf.math.l2_normalize(
            tf.reduce_mean(network(batch[view], training=True), axis=[1, 2]), axis=-1
        )

    # Queries of views 1, 2 against keys of views 2, 1.
    with tf.GradientTape(persistent=True) as tape:
        query_rows = tf.concat([pooled(model.query_model, v) for v in ("view1", "view2")], 0)
    key_2 = pooled(model.key_model, "view2").numpy()
    keys = np.concatenate([key_2, pooled(model.key_model, "view1").numpy()])
    queries = query_rows.numpy()
    metrics = run_steps(model, tf.distribute.get_strategy(), [batch])[0]

    valid_rows = np.tile(batch["valid"], 2)
    all_loss, all_grad = reference.info_nce(queries, keys, queues[0], 0.2)
    valid_loss, valid_grad = reference.info_nce(queries, keys, queues[1], 0.2)
    all_loss, valid_loss = np.mean(all_loss), np.mean(valid_loss[valid_rows])
    assert metrics["all_loss"] == pytest.approx(all_loss, rel=1e-4)
    assert metrics["valid_loss"] == pytest.approx(valid_loss, rel=1e-4)
    assert metrics["loss"] == pytest.approx(0.75 * all_loss + 0.25 * valid_loss, rel=1e-4)
    # The update is the gradient of 0.75 * (mean over 8 rows) + 0.25 * (mean over the 6
    # valid rows): backpropagate NumPy's per-row query gradients through the network.
    row_grads = 0.75 * all_grad / 8 + 0.25 * valid_grad * valid_rows[:, None] / 6
    with tape:
        surrogate = tf.reduce_sum(row_grads * query_rows)
    expected = tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(surrogate, variables)], 0)
    update = np.concatenate([(b - v.numpy()).ravel() for b, v in zip(before, variables)])
    assert np.linalg.norm(update - expected) < 1e-3 * np.linalg.norm(expected)
    # `all` enqueued the 4 keys of view 2, `valid` only those of the valid pairs 0, 2, 3.
    np.testing.assert_allclose(model.queue.numpy()[:4], key_2, atol=1e-5)
    np.testing.assert_allclose(model.valid_queue.numpy()[:3], key_2[[0, 2, 3]], atol=1e-5)
    np.testing.assert_array_equal(model.valid_queue.numpy()[3:], queues[1][3:])
    assert int(model.queue_pointer.numpy()) == 4 and int(model.valid_queue_pointer.numpy()) == 3
