"""Feature extractors (random, .keras, SavedModel contract) and the segmentation reader."""

import numpy as np
import pytest
import tensorflow as tf

from vader_tf.data import segmentation
from vader_tf.eval.encoders import load_feature_extractor, load_keras_encoder, pad_to_multiple


@pytest.fixture(scope="module")
def random_extractor():
    return load_feature_extractor("random:resnet18", seed=3)


def test_random_extractor_pads_and_crops(random_extractor):
    images = np.random.default_rng(0).uniform(0, 255, (2, 40, 70, 3)).astype(np.float32)
    features = random_extractor(images).numpy()
    assert features.shape == (2, 10, 18, 128 + 256)  # the served map: decoder and P4
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-4)
    # Seeded: the same spec and seed give the same features.
    again = load_feature_extractor("random:resnet18", seed=3)(images).numpy()
    np.testing.assert_allclose(again, features, atol=1e-5)


def test_pad_to_multiple_mirrors_border():
    images = tf.reshape(tf.range(2 * 33 * 3, dtype=tf.float32), [1, 2, 33, 3])
    padded = pad_to_multiple(images)
    assert padded.shape == (1, 32, 64, 3)  # Smaller than 32: zero padding.
    images = tf.random.uniform([1, 40, 33, 3])
    padded = pad_to_multiple(images)
    assert padded.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(padded[0, 40, :33], images[0, 39])


def test_saved_model_contract(tmp_path, random_extractor):
    encoder = load_keras_encoder("random:resnet18", seed=3)

    class Export(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def serve(self, images):
            return {"features": encoder(tf.cast(images, tf.float32), training=False)}

    module = Export()
    module.encoder = encoder
    export_dir = tmp_path / "export"
    tf.saved_model.save(module, str(export_dir / "1"), signatures={"serving_default": module.serve})
    images = np.round(np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3))).astype(np.float32)
    from_export = load_feature_extractor(str(export_dir))(images).numpy()
    np.testing.assert_allclose(from_export, random_extractor(images).numpy(), atol=1e-4)


def test_keras_file_spec(tmp_path, random_extractor):
    path = str(tmp_path / "encoder.keras")
    load_keras_encoder("random:resnet18", seed=3).save(path)
    images = np.zeros((1, 32, 32, 3), np.float32)
    np.testing.assert_allclose(
        load_feature_extractor(path)(images).numpy(), random_extractor(images).numpy(), atol=1e-5
    )


def test_read_split_errors_name_the_missing_piece(segmentation_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test.*Available splits: \['train', 'val'\]"):
        segmentation.read_split(segmentation_root, "test")
    (tmp_path / "broken.txt").write_text("a.png b.png\n")
    with pytest.raises(FileNotFoundError, match="a.png"):
        segmentation.read_split(str(tmp_path), "broken")
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=f"^Data root {missing}: no such directory.$"):
        segmentation.read_split(missing, "train")


def test_load_split_resizes_to_multiples_of_32(segmentation_root):
    images, labels = segmentation.load_segmentation_split(segmentation_root, "train", 40)
    # 40x52 -> short side 40 -> 40x52 -> cropped to 32x32.
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (4, 32, 32)
    assert set(np.unique(labels)) <= {0, 1, 255}  # Nearest neighbour: no new values.
    image, label = next(iter(segmentation.segmentation_dataset(images, labels)))
    assert image.dtype == tf.float32 and label.dtype == tf.int32
