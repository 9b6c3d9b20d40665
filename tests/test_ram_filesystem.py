"""A whole run on a filesystem that is not the local one: TensorFlow's in-memory `ram://`.

Every path goes through `tf.io.gfile`, not the local filesystem: data is read, a run is
trained, resumed and exported, and a TFLite model is written, all in `ram://` (which
lives in this process only, so everything runs in-process). Running in an empty working
directory catches paths that would land in a local folder named `ram:`. `ram://` still
has directories and an atomic rename, unlike gs://; tests/test_object_store.py covers
object-store semantics.
"""

import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tests.training import helpers
from vader_tf.eval.encoders import load_feature_extractor
from vader_tf.export import export_saved_model, export_tflite
from vader_tf.export.sample_images import sample_images
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.training.pretrain import pretrain

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def ram_run(tmp_path_factory):
    """Pretrains 2 steps, resumes to 4, exports: `(root, local_dir, history)`."""
    photos = tmp_path_factory.mktemp("photos")
    helpers.write_smooth_photos(photos, 6)
    local = tmp_path_factory.mktemp("cwd")
    root = f"ram://vader-test-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(f"{root}/photos/nested")
    for i, name in enumerate(sorted(os.listdir(photos))):
        # Half in a sub-folder: the folder source lists recursively.
        target = f"{root}/photos/{'nested/' if i % 2 else ''}{name}"
        tf.io.gfile.copy(str(photos / name), target)
    previous = os.getcwd()
    os.chdir(local)
    try:
        config = dict(train_steps=2, checkpoint_every=2, deterministic=True)
        _, first = pretrain(helpers.small_config(f"{root}/run", f"{root}/photos", **config))
        config["train_steps"] = 4
        _, resumed = pretrain(helpers.small_config(f"{root}/run", f"{root}/photos", **config))
        export_saved_model(
            load_encoder(f"{root}/run"),
            f"{root}/serving",
            sample_size=IMAGE_SIZE,
            num_sample_images=2,
        )
    finally:
        os.chdir(previous)
    yield root, local, [h["step"] for h in first + resumed]
    tf.io.gfile.rmtree(root)


def test_run_trains_resumes_and_exports_in_ram(ram_run):
    root, local, steps = ram_run
    assert os.listdir(local) == []  # Nothing went to a local folder "ram:".
    assert steps == [1, 2, 3, 4]  # The second call resumed at step 2.
    run = RunDir(f"{root}/run")
    assert run.latest_step() == 4
    assert run.read_run_config()["train_steps"] == 4
    assert run.event_files()
    for path in (run.encoder_config_path, run.encoder_path):
        assert tf.io.gfile.exists(path)
    assert [name.rstrip("/") for name in tf.io.gfile.listdir(f"{root}/serving")] == ["1"]

    images = sample_images(3, IMAGE_SIZE)[0]
    loaded = tf.saved_model.load(f"{root}/serving/1")
    features = loaded.signatures["serving_default"](images=tf.constant(images))["features"]
    features = features.numpy()
    assert features.shape[:3] == (3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-3)
    # The export holds the resumed run's final weights: the same as the Keras file
    # written at the end of the run, read back from ram://.
    keras_encoder = load_encoder(run.encoder_path)
    expected = keras_encoder(tf.cast(images, tf.float32), training=False).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-4)
    # Evaluation finds the export through its base directory.
    extractor = load_feature_extractor(f"{root}/serving")
    np.testing.assert_allclose(extractor(images.astype("float32")).numpy(), expected, atol=1e-3)


def test_tflite_model_written_to_ram(ram_run):
    pytest.importorskip("ai_edge_litert")
    from vader_tf.export.tflite import TFLiteRunner, report_path

    root, local, _ = ram_run
    images = sample_images(2, IMAGE_SIZE)[0]
    output = f"{root}/tflite/encoder.tflite"
    previous = os.getcwd()
    os.chdir(local)
    try:
        report = export_tflite(
            f"{root}/serving", output, input_size=IMAGE_SIZE, evaluation_images=images
        )
    finally:
        os.chdir(previous)
    assert os.listdir(local) == []
    assert tf.io.gfile.listdir(f"{root}/tflite") == ["encoder.parity.json", "encoder.tflite"]
    with tf.io.gfile.GFile(report_path(output)) as f:
        assert json.load(f)["tflite"] == output
    assert report["file_size_bytes"] == tf.io.gfile.stat(output).length
    loaded = tf.saved_model.load(f"{root}/serving/1")
    expected = loaded.signatures["serving_default"](images=tf.constant(images[:1]))["features"]
    np.testing.assert_allclose(TFLiteRunner(output)(images[:1]), expected.numpy(), atol=1e-3)
