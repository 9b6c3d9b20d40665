"""Tests of the TF Serving SavedModel export."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from vader_tf import serving_contract
from vader_tf.export import sample_images, saved_model

from tests.export.helpers import (
    EMBEDDING_DIM, FEATURE_DIM, IMAGE_SIZE, fused_reference, small_encoder,
)


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(count=2, height=IMAGE_SIZE, width=IMAGE_SIZE):
    return tf.constant(sample_images.sample_images(count, height, width)[0])


def _run_python(code, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_export_layout(export_base, export_dir):
    assert sorted(os.listdir(export_base)) == ["1"]
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    with open(os.path.join(export_dir, serving_contract.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["embedding_dim"] == EMBEDDING_DIM
    assert metadata["feature_dim"] == FEATURE_DIM
    assert metadata["contract_version"] == serving_contract.CONTRACT_VERSION == 3
    assert metadata["features"] == "fused"
    assert metadata["signatures"] == ["encoded_images", "pyramid", "serving_default"]
    assert metadata["verification"]["serving_default_max_abs_error"] < 1e-4


def test_versions_are_never_overwritten(export_base, loaded_encoder, tmp_path):
    assert saved_model.next_version(export_base) == 2
    with pytest.raises(FileExistsError, match="never overwritten"):
        saved_model.export_saved_model(loaded_encoder, export_base, version=1)
    for name in ("1", "3", "not_a_version", ".tmp-9-123"):
        os.makedirs(tmp_path / name)
    assert serving_contract.versions(str(tmp_path)) == [1, 3]
    assert saved_model.next_version(str(tmp_path)) == 4


# Run in a fresh interpreter in which vader_tf, keras and keras_hub cannot be imported at
# all (`import tensorflow` itself imports `keras.src.optimizers` when Keras is installed,
# and tolerates its absence).
_LOAD_WITHOUT_KERAS = """
import json, sys
for name in ("keras", "tf_keras", "keras_hub", "vader_tf"):
    sys.modules[name] = None
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
features = model.signatures["serving_default"](images=tf.constant(images))["features"].numpy()
loaded = [name for name, module in sys.modules.items()
          if module is not None and name.split(".")[0] in ("keras", "tf_keras", "vader_tf")]
print(json.dumps({"shape": features.shape, "norm": np.linalg.norm(features, axis=-1).tolist(),
                  "loaded": loaded}))
"""

# The same without blocking imports: which Keras modules does loading the model add?
_LOAD_AND_LIST_KERAS_MODULES = """
import json, sys
import tensorflow as tf
def keras_modules():
    return {name for name in sys.modules if name.split(".")[0] in ("keras", "vader_tf")}
after_import = keras_modules()
model = tf.saved_model.load(sys.argv[1])
model.signatures["serving_default"](images=tf.zeros([1, 32, 32, 3], tf.uint8))
print(json.dumps({"after_import_tensorflow": len(after_import),
                  "added_by_load": sorted(keras_modules() - after_import)}))
"""


def test_loads_in_fresh_process_without_keras(export_dir):
    result = json.loads(_run_python(_LOAD_WITHOUT_KERAS, export_dir).splitlines()[-1])
    assert result["shape"] == [2, 16, 24, FEATURE_DIM]
    np.testing.assert_allclose(result["norm"], 1.0, atol=1e-4)
    assert result["loaded"] == []


def test_loading_imports_no_keras_modules(export_dir):
    result = json.loads(_run_python(_LOAD_AND_LIST_KERAS_MODULES, export_dir).splitlines()[-1])
    assert result["added_by_load"] == []


def test_saved_model_cli_lists_serving_signature(export_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    output = subprocess.run(
        [cli, "show", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
         "serving_default"],
        capture_output=True, text=True, check=True, env=env, timeout=120,
    ).stdout
    assert "inputs['images']" in output
    assert "dtype: DT_UINT8" in output
    assert "shape: (-1, -1, -1, 3)" in output
    assert "outputs['features']" in output
    assert "dtype: DT_FLOAT" in output
    assert f"shape: (-1, -1, -1, {FEATURE_DIM})" in output


def test_signatures(exported):
    assert set(exported.signatures) == {"serving_default", "pyramid", "encoded_images"}
    serving = exported.signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    assert serving.structured_outputs["features"].dtype == tf.float32
    bytes_spec = exported.signatures["encoded_images"].structured_input_signature[1]
    assert bytes_spec["image_bytes"].dtype == tf.string


def test_serving_default_outputs_unit_norm_features(exported):
    images = _images(2, IMAGE_SIZE, 2 * IMAGE_SIZE)
    features = exported.signatures["serving_default"](images=images)["features"].numpy()
    assert features.shape == (2, IMAGE_SIZE // 4, IMAGE_SIZE // 2, FEATURE_DIM)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)


def test_features_are_the_fused_map_and_embedding_the_head(exported, loaded_encoder):
    images = _images(1)
    served = exported.signatures["serving_default"](images=images)["features"].numpy()
    pyramid = {k: v.numpy() for k, v in exported.signatures["pyramid"](images=images).items()}
    np.testing.assert_allclose(
        served, fused_reference(pyramid["decoder"], pyramid["P4"]), atol=1e-5
    )
    # The training embedding: what the encoder as trained returns, unit norm, D channels.
    head = loaded_encoder.with_output("embedding")(tf.cast(images, tf.float32)).numpy()
    assert pyramid["embedding"].shape[-1] == EMBEDDING_DIM
    np.testing.assert_allclose(pyramid["embedding"], head, atol=1e-5)


def test_pyramid_signature(exported):
    images = _images(1)
    outputs = exported.signatures["pyramid"](images=images)
    assert set(outputs) == {"features", "embedding", "decoder", "P2", "P3", "P4", "P5"}
    for level, stride in (("P2", 4), ("P3", 8), ("P4", 16), ("P5", 32)):
        assert outputs[level].shape[1:3] == (IMAGE_SIZE // stride, IMAGE_SIZE // stride)
    assert outputs["decoder"].shape[1:3] == (IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    expected = exported.signatures["serving_default"](images=images)["features"]
    np.testing.assert_allclose(outputs["features"], expected, atol=1e-6)


def test_encoded_images_signature(exported):
    images = _images(2)
    encode = exported.signatures["encoded_images"]
    png = tf.stack([tf.io.encode_png(image) for image in images])
    expected = exported.signatures["serving_default"](images=images)["features"]
    np.testing.assert_allclose(encode(image_bytes=png)["features"], expected, atol=1e-6)
    jpeg = tf.stack([tf.io.encode_jpeg(image) for image in images])
    assert encode(image_bytes=jpeg)["features"].shape == expected.shape
    mixed = tf.stack([tf.io.encode_png(images[0]), tf.io.encode_png(images[1][:32])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="same size"):
        encode(image_bytes=mixed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty"):
        encode(image_bytes=tf.constant([], tf.string))


def test_rejects_float_input(exported):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="uint8"):
        exported.signatures["serving_default"](images=tf.zeros([1, 64, 64, 3], tf.float32))


@pytest.mark.parametrize("shape", [(1, 60, 64, 3), (1, 64, 48, 3), (1, 0, 64, 3)])
def test_rejects_sizes_not_multiple_of_32(exported, shape):
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 32"):
        exported.signatures["serving_default"](images=tf.zeros(shape, tf.uint8))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((0, 64, 64, 3), "the batch is empty"),
        ((64, 64, 3), r"expected a batch of RGB images \[N, H, W, 3\]; got shape\] \[64 64 3\]"),
        ((1, 64, 64, 4), r"got shape\] \[1 64 64 4\]"),
        ((1, 64, 64, 1), r"got shape\] \[1 64 64 1\]"),
    ],
)
@pytest.mark.parametrize("signature", ["serving_default", "pyramid"])
def test_rejects_empty_batches_and_wrong_shapes_with_a_clear_message(
    exported, signature, shape, message
):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        exported.signatures[signature](images=tf.zeros(shape, tf.uint8))


def test_warmup_record_is_the_tensorflow_serving_message():
    pytest.importorskip("tensorflow_serving.apis")
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    images = np.arange(2 * 32 * 64 * 3, dtype=np.uint8).reshape(2, 32, 64, 3)
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="vader", signature_name="serving_default")
    )
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    expected = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    record = saved_model.predict_warmup_record(images)
    assert prediction_log_pb2.PredictionLog.FromString(record) == expected
    assert record == expected.SerializeToString()


def test_warmup_file_is_written_without_tensorflow_serving(tmp_path, monkeypatch):
    for name in ("tensorflow_serving", "tensorflow_serving.apis"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` now raises ImportError.
    path = str(tmp_path / serving_contract.WARMUP_FILE)
    images = np.full((1, 32, 32, 3), 7, np.uint8)
    saved_model.write_warmup_requests(path, images)
    (record,) = tf.data.TFRecordDataset(path).as_numpy_iterator()
    assert record == saved_model.predict_warmup_record(images)


def test_warmup_requests_parse(export_dir, exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, serving_contract.WARMUP_FILE)
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    images = tf.make_ndarray(request.inputs["images"])
    assert images.dtype == np.uint8 and images.ndim == 4
    exported.signatures["serving_default"](images=tf.constant(images))


def test_a_model_base_directory_means_its_newest_version(export_base, export_dir, tmp_path, caplog):
    assert saved_model.resolve_version_dir(export_dir) == export_dir
    assert saved_model.resolve_version_dir(export_base) == export_dir
    base = tmp_path / "serving"
    os.makedirs(base)
    for version in ("2", "10"):  # Numerically newest, not lexically.
        os.symlink(export_dir, base / version)
    os.makedirs(base / "11")  # Not a SavedModel.
    with caplog.at_level("INFO", logger="absl"):
        assert saved_model.resolve_version_dir(str(base)) == str(base / "10")
    assert "newest version" in caplog.text


def test_a_run_directory_or_missing_path_is_not_a_saved_model(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="pretraining run directory.*export it first: ") as error:
        saved_model.resolve_version_dir(model_dir)
    # The export the hint proposes is the run's own model, not a new version of another's.
    name = os.path.basename(model_dir.rstrip("/"))
    assert re.search(
        rf"(vader-export|-m vader_tf\.scripts\.export_saved_model) .*--export_dir=exports/{name}$",
        str(error.value),
    ), str(error.value)
    with pytest.raises(FileNotFoundError, match="No SavedModel"):
        saved_model.resolve_version_dir(str(tmp_path / "missing"))


def test_verification_detects_a_different_model(export_dir):
    other = small_encoder()
    with pytest.raises(saved_model.ExportVerificationError, match="differs"):
        saved_model.verify_export(export_dir, other, _images(1).numpy())


def test_failed_export_leaves_no_version_directory(loaded_encoder, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption during verification")

    monkeypatch.setattr(saved_model, "verify_export", interrupted)
    base = tmp_path / "serving"
    with pytest.raises(KeyboardInterrupt):
        saved_model.export_saved_model(loaded_encoder, str(base), sample_size=IMAGE_SIZE)
    assert os.listdir(base) == []


# Killed (SIGKILL, no clean-up possible) after the SavedModel was written, during the
# verification step.
_KILLED_DURING_EXPORT = """
import os, signal, sys
from tests.export.helpers import small_encoder
from vader_tf.export import saved_model
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
saved_model.verify_export = killed
saved_model.export_saved_model(small_encoder(), sys.argv[1], sample_size=64, num_sample_images=1)
"""


def test_killed_export_leaves_no_version_directory(tmp_path):
    base = str(tmp_path / "serving")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_DURING_EXPORT, base],
        capture_output=True, env=env, timeout=120, cwd=_REPO_ROOT,
    )
    assert result.returncode == -9, result.stderr[-3000:]
    (leftover,) = os.listdir(base)
    assert leftover.startswith(saved_model.TMP_PREFIX)
    assert serving_contract.versions(base) == []
    assert saved_model.next_version(base) == 1


def test_next_export_removes_stale_temporaries_of_killed_exports(loaded_encoder, tmp_path, caplog):
    base = tmp_path / "serving"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # Its pid now names no running process.
    stale = base / f"{saved_model.TMP_PREFIX}1-{finished.pid}"
    running = base / f"{saved_model.TMP_PREFIX}2-{os.getpid()}"  # A concurrent export.
    for folder in (stale, running):
        (folder / "variables").mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"half-written")
    with caplog.at_level("WARNING"):
        saved_model.export_saved_model(
            loaded_encoder, str(base), sample_size=IMAGE_SIZE, num_sample_images=1
        )
    assert sorted(os.listdir(base)) == sorted(["1", running.name])
    assert str(stale) in caplog.text and "killed export" in caplog.text
