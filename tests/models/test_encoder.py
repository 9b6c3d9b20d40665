"""The dense encoder: shapes, unit norm, serialisation, dynamic shapes, pyramid access."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.encoder_checks import check_saved_model_with_dynamic_shapes, random_images
from vader_tf.models import DenseEncoder, build_backbone, build_encoder
from vader_tf.models.backbone import backbone_name


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return build_encoder("resnet18", decoder_channels=32, head_hidden_dim=32, embedding_dim=16)


@pytest.mark.parametrize("height,width", [(32, 32), (64, 96), (160, 128)])
def test_output_is_stride_4_and_unit_norm(encoder, height, width):
    features = encoder(random_images(2, height, width)).numpy()
    assert features.shape == (2, height // 4, width // 4, 16)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)


def test_pyramid_outputs_have_their_strides(encoder):
    model = keras.Model(encoder.input, encoder.pyramid_outputs)
    outputs = model(random_images(1, 64, 128))
    expected = {"P2": (16, 32, 64), "P3": (8, 16, 128), "P4": (4, 8, 256), "P5": (2, 4, 512), "decoder": (16, 32, 32)}
    for name, shape in expected.items():
        assert tuple(outputs[name].shape[1:]) == shape, name


def test_keras_file_round_trip(encoder, tmp_path):
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, DenseEncoder)
    # JSON turns tuples into lists; compare the configs as JSON would write them.
    assert json.loads(json.dumps(restored.get_config())) == json.loads(json.dumps(encoder.get_config()))
    images = random_images(1, 64, 64, seed=1)
    np.testing.assert_allclose(restored(images).numpy(), encoder(images).numpy(), atol=1e-6)


def test_config_round_trip_rebuilds_the_architecture(encoder):
    clone = DenseEncoder.from_config(encoder.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in encoder.weights]
    assert backbone_name(clone.backbone) == "resnet18"


def test_dynamic_shapes_trace_once_and_run_at_any_multiple_of_32(encoder):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def serve(images):
        return encoder(images, training=False)

    for height, width in [(32, 64), (96, 32), (128, 160)]:
        eager = encoder(random_images(1, height, width), training=False).numpy()
        traced = serve(random_images(1, height, width)).numpy()
        np.testing.assert_allclose(traced, eager, atol=1e-5)
    assert len(serve._list_all_concrete_functions()) == 1


def test_saved_model_with_dynamic_shapes(encoder, tmp_path):
    check_saved_model_with_dynamic_shapes(encoder, tmp_path, [(96, 64), (32, 160)])


def test_resnet50_encoder_builds_with_the_paper_layout():
    encoder = build_encoder("resnet50")
    assert encoder.backbone.block_type == "bottleneck_block"
    assert encoder.output_shape == (None, None, None, 128)
    assert encoder(random_images(1, 64, 64)).shape == (1, 16, 16, 128)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="resnet9"):
        build_backbone("resnet9")


def test_backbone_weights_file_is_loaded(tmp_path):
    source = build_backbone("resnet18")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    encoder = build_encoder("resnet18", backbone_weights=path)
    for a, b in zip(source.weights, encoder.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
