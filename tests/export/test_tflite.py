"""Tests of the TFLite / LiteRT conversion and its parity report."""

import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests.export.helpers import IMAGE_SIZE
from vader_tf.export import sample_images, tflite

# Worst and mean per-pixel cosine similarity to the SavedModel and max abs error, on 4
# held-out sample-photo crops at 64x64 with the tests' small random resnet18 (D=16).
# Measured here (worst / mean / max abs): none 0.9999999 / 1.0 / 1e-6, float16
# 0.9999993 / 1.0 / 6.3e-4, dynamic 0.99944 / 0.99994 / 0.020, int8 (16 calibration
# crops) 0.99239 / 0.99953 / 0.061. The quantized bounds leave room for other seeds.
TOLERANCES = {
    "none": dict(worst=0.9999, mean=0.99999, max_abs_error=1e-4),
    "float16": dict(worst=0.999, mean=0.9999, max_abs_error=5e-3),
    "dynamic": dict(worst=0.99, mean=0.999, max_abs_error=0.05),
    "int8": dict(worst=0.95, mean=0.99, max_abs_error=0.2),
}
NUM_CALIBRATION_IMAGES = 16


@pytest.fixture(scope="module")
def evaluation_images():
    """Sample-photo crops disjoint from the calibration crops."""
    return sample_images.sample_images(4, IMAGE_SIZE, start=NUM_CALIBRATION_IMAGES)[0]


@pytest.mark.parametrize("quantization", tflite.QUANTIZATION_MODES)
def test_parity(quantization, export_base, export_dir, evaluation_images, tmp_path):
    calibration = sample_images.sample_images(NUM_CALIBRATION_IMAGES, IMAGE_SIZE)[0]
    output = str(tmp_path / f"vader_{quantization}.tflite")
    report = tflite.export_tflite(
        # A model base directory stands for its newest version (here: export_dir).
        export_base if quantization == "none" else export_dir,
        output,
        quantization=quantization,
        input_size=IMAGE_SIZE,
        calibration_images=calibration,
        evaluation_images=evaluation_images,
    )
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(output), f"vader_{quantization}.parity.json"]
    )
    with open(tflite.report_path(output)) as f:
        assert json.load(f) == report
    tolerance = TOLERANCES[quantization]
    assert report["cosine_worst"] > tolerance["worst"], report
    assert report["cosine_mean"] > tolerance["mean"], report
    assert report["max_abs_error"] < tolerance["max_abs_error"], report
    assert report["file_size_bytes"] == os.path.getsize(output)
    assert report["median_latency_ms"] > 0


def test_dynamic_size(export_dir, tmp_path):
    path = str(tmp_path / "dynamic.tflite")
    with open(path, "wb") as f:
        f.write(tflite.convert(export_dir, dynamic_size=True))
    runner = tflite.TFLiteRunner(path)
    images = sample_images.sample_images(2, IMAGE_SIZE, 2 * IMAGE_SIZE)[0]
    expected = tf.saved_model.load(export_dir).signatures["serving_default"](
        images=tf.constant(images)
    )["features"]
    np.testing.assert_allclose(runner(images), expected, atol=1e-4)
    with pytest.raises(ValueError, match="multiples of 32"):
        runner(images[:, :60])


class _DeterminantModule(tf.Module):
    """A `serving_default` that needs the non-builtin op MatrixDeterminant."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def serve(self, images):
        matrices = tf.cast(images[:, :3, :3, 0], tf.float32)
        return {"features": tf.reshape(tf.linalg.det(matrices), [-1, 1, 1, 1])}


def test_flex_ops_are_refused_unless_allowed(tmp_path):
    module = _DeterminantModule()
    path = str(tmp_path / "det")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with pytest.raises(tflite.FlexOpsRequiredError, match="MatrixDeterminant"):
        tflite.convert(path, input_size=32)
    assert tflite.convert(path, input_size=32, allow_flex=True)


def test_calibration_folder_is_read_like_data_nested_and_bad_files_named(tmp_path, caplog):
    # Two flat-colour photos in nested folders, and a corrupt file that must be skipped.
    colours = {"a/red.png": (255, 0, 0), "a/b/blue.jpg": (0, 0, 255)}
    for name, colour in colours.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), colour).save(path)
    corrupt = tmp_path / "a" / "b" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    with caplog.at_level("WARNING"):
        images, source = sample_images.sample_images(4, 32, folder=str(tmp_path))
    assert source == str(tmp_path) and images.shape == (4, 32, 32, 3)
    # Path order: a/b/blue.jpg, a/red.png; then their second views.
    expected = np.array([(0, 0, 255), (255, 0, 0)] * 2)
    np.testing.assert_allclose(images.mean(axis=(1, 2)), expected, atol=3)
    assert str(corrupt) in caplog.text
