"""Feature taps of `load_feature_extractor`: backbone levels and the decoder on the
stride-4 grid, from Keras encoders and from SavedModel exports (`pyramid` signature)."""

import keras
import numpy as np
import pytest

from vader_tf.eval.encoders import LAYERS, load_feature_extractor, load_keras_encoder
from vader_tf.export.saved_model import export_saved_model
from vader_tf.models.encoder import build_encoder

IMAGES = np.random.default_rng(0).uniform(0, 255, (2, 40, 70, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "layer, channels",
    [
        ("features", 128 + 256), ("embedding", 128), ("decoder", 128),
        ("P2", 64), ("P3", 128), ("P4", 256), ("P5", 512),
    ],
)
def test_every_tap_is_unit_norm_on_the_stride_4_grid(layer, channels):
    extractor = load_feature_extractor("random:resnet18", seed=3, layer=layer)
    features = extractor(IMAGES).numpy()
    assert extractor.layer == layer
    assert features.shape == (2, 10, 18, channels)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-4)


def test_backbone_tap_is_the_resized_normalised_level():
    encoder = load_keras_encoder("random:resnet18", seed=3)
    padded = np.pad(IMAGES[:1], [[0, 0], [0, 24], [0, 26], [0, 0]], mode="symmetric")
    level = keras.Model(encoder.input, encoder.pyramid_outputs["P4"])(padded)
    # Stride-4 cell i is centred at 4i + 0.5, grid coordinate i / 4 of the stride-16 P4.
    expected = level.numpy()[0]
    for axis, cells in ((0, 16), (1, 24)):
        source = np.arange(cells) / 4.0
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, expected.shape[axis] - 1)
        weight = np.expand_dims(source - low, [a for a in range(3) if a != axis])
        expected = (1 - weight) * np.take(expected, low, axis) + weight * np.take(
            expected, high, axis
        )
    expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
    expected = expected[None, :10, :18]
    tapped = load_feature_extractor("random:resnet18", seed=3, layer="P4")(IMAGES[:1])
    np.testing.assert_allclose(tapped.numpy(), expected, atol=1e-5)


def test_unknown_layer_is_rejected():
    with pytest.raises(ValueError, match="Unknown layer 'C4'"):
        load_feature_extractor("random:resnet18", layer="C4")
    for layer in ("decoder+C4", "P4+P4", "decoder+", "decoder+P4@0", "decoder+P4@x", "P4+P4@2"):
        with pytest.raises(ValueError, match="Unknown layer"):
            load_feature_extractor("random:resnet18", layer=layer)


def test_a_joined_tap_averages_its_parts_similarities():
    parts = [
        load_feature_extractor("random:resnet18", seed=3, layer=layer)(IMAGES).numpy()
        for layer in ("decoder", "P4")
    ]
    joined = load_feature_extractor("random:resnet18", seed=3, layer="decoder+P4")(IMAGES)
    joined = joined.numpy()
    assert joined.shape == (2, 10, 18, 128 + 256)
    np.testing.assert_allclose(np.linalg.norm(joined, axis=-1), 1.0, atol=1e-4)
    # Cosine similarity of every pair of cells: the mean of the two parts' similarities.
    def similarities(features):
        flat = features.reshape(-1, features.shape[-1])
        return flat @ flat.T

    expected = (similarities(parts[0]) + similarities(parts[1])) / 2
    np.testing.assert_allclose(similarities(joined), expected, atol=1e-4)
    weighted = load_feature_extractor("random:resnet18", seed=3, layer="decoder+P4@0.25")
    expected = (similarities(parts[0]) + 0.25 * similarities(parts[1])) / 1.25
    np.testing.assert_allclose(similarities(weighted(IMAGES).numpy()), expected, atol=1e-4)


def test_saved_model_taps_match_keras(tmp_path):
    keras.utils.set_random_seed(5)
    encoder = build_encoder("resnet18", decoder_channels=32, head_hidden_dim=32, embedding_dim=16)
    keras_path = str(tmp_path / "encoder.keras")
    encoder.save(keras_path)
    export_base = str(tmp_path / "export")
    export_saved_model(encoder, export_base, sample_size=64, num_sample_images=1)
    images = np.round(IMAGES)
    for layer in (*LAYERS, "decoder+P4@0.5"):
        from_export = load_feature_extractor(export_base, layer=layer)(images).numpy()
        from_keras = load_feature_extractor(keras_path, layer=layer)(images).numpy()
        np.testing.assert_allclose(from_export, from_keras, atol=1e-4, err_msg=layer)
