"""Methods are registered by name: pretrain builds them through the registry alone."""

import pytest
import tensorflow as tf

from tests.training.helpers import small_config
from vader_tf.training import methods
from vader_tf.training.moco import MoCo
from vader_tf.training.momentum_contrast import MomentumContrast
from vader_tf.training.pretrain import PretrainConfig, build_model
from vader_tf.training.vader import VADeR


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))
    return methods


def test_built_in_methods_are_registered():
    assert methods.registered_methods() == ("moco", "vader")
    assert methods.get_method("vader") is VADeR and methods.get_method("moco") is MoCo


def test_unknown_method_is_a_clear_error_listing_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match="Unknown method 'densecl'; registered methods: moco, vader"):
        methods.get_method("densecl")
    with pytest.raises(ValueError, match=r"method must be one of moco, vader, got 'densecl'"):
        PretrainConfig(method="densecl").validate()


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
                tf.concat([q1, q2], 0), tf.concat([k2, k1], 0), tf.concat([valid, valid], 0),
                k2, tf.cast(data["valid"], tf.bool),
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
