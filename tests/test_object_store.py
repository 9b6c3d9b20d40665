"""Runs on a filesystem with object-store semantics (`objstore://`), as on gs://.

`ram://` (tests/test_ram_filesystem.py) has directories and an atomic rename; object
stores such as GCS have neither: a directory is only a prefix of object names, a rename is
a copy and then a delete, and an object appears when its upload completes. Checkpoints,
the run directory's files, resume and export are checked here on a test double with those
semantics, through which a run trains, is SIGKILLed in the middle of a non-atomic rename,
resumes bit-identically to an uninterrupted run, and an export publishes and loads.

Why a TensorFlow filesystem plugin (tests/support/objstore_filesystem.c, compiled with
gcc at test time and registered with `tf.experimental.register_filesystem_plugin`):
checkpoints and SavedModels are written by TensorFlow's C++ ops (SaveV2,
MergeV2Checkpoints), which a Python patch of `tf.io.gfile` never sees. The simpler route,
TensorFlow's own gs:// client talking to a GCS emulator on 127.0.0.1, is closed: in TF
2.21 its endpoint is fixed (`https://www.googleapis.com/storage/v1/`, no emulator
variable among its `GCS_*` settings), so it would need TLS and name resolution faked
system-wide. The plugin stores each object as one flat file in a local folder
(VADER_OBJSTORE_ROOT), so a killed subprocess' uploads survive for the process that
resumes, and can SIGKILL its process right before a chosen upload or delete.
"""

import os
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.support import objstore
from tests.training.helpers import write_smooth_photos
from vader_tf import storage
from vader_tf.export.sample_images import sample_images
from vader_tf.run_dir import RunDir, load_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "objstore://bucket"
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """`(plugin, root)`: the plugin built and registered over the local folder `root`."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the objstore:// filesystem plugin")
    build = tmp_path_factory.mktemp("objstore_build")
    plugin = objstore.build(str(build))
    root = str(build / "objects")
    objstore.register(plugin, root)
    return plugin, root


def _write(path, content):
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(content)


def test_the_double_has_object_store_semantics(store):
    # The double itself: no directories, no rename, uploads visible when closed.
    base = f"{BUCKET}/semantics"
    assert not tf.io.gfile.exists(base)
    with tf.io.gfile.GFile(f"{base}/a/file.txt", "w") as f:
        f.write("partial")
        assert not tf.io.gfile.exists(f"{base}/a/file.txt")  # Not uploaded yet.
    assert tf.io.gfile.isdir(f"{base}/a")  # A prefix of an object, never created.
    assert sorted(tf.io.gfile.listdir(base)) == ["a/"]  # As gs:// lists a "directory".
    tf.io.gfile.rename(f"{base}/a", f"{base}/b")  # Object by object.
    assert not tf.io.gfile.exists(f"{base}/a")
    with tf.io.gfile.GFile(f"{base}/b/file.txt") as f:
        assert f.read() == "partial"
    tf.io.gfile.remove(f"{base}/b/file.txt")
    assert not tf.io.gfile.exists(f"{base}/b")  # Gone with its last object.
    stored = os.listdir(store[1])
    assert all("%2F" in name or name.startswith(".") for name in stored)  # Flat keys.


def test_atomic_files_of_the_run_directory(store):
    run = RunDir(f"{BUCKET}/atomic")
    run.write_run_config({"train_steps": 3})
    run.write_run_config({"train_steps": 4})  # Overwrites an existing object.
    assert run.read_run_config() == {"train_steps": 4}
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    run.save_encoder(model)
    run.save_encoder(model)
    # (Read back as the Keras file it is: `load_encoder` takes DenseEncoders only.)
    loaded = keras.saving.load_model(run.encoder_path)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])
    # No temporary object is left beside them.
    assert sorted(storage.listdir(run.path)) == ["encoder.keras", "run_config.json"]


def _pretrain(store, model_dir, data, kill_before=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    env.pop("VADER_OBJSTORE_KILL_BEFORE", None)
    if kill_before:
        env["VADER_OBJSTORE_KILL_BEFORE"] = kill_before
    flags = [
        f"--model_dir={model_dir}", f"--data=folder:{data}", f"--image_size={IMAGE_SIZE}",
        "--batch_size=4", "--num_points=8", "--queue_size=64", "--queue_points_per_image=4",
        "--decoder_channels=16", "--embedding_dim=8", "--train_steps=4",
        "--checkpoint_every=2", "--log_every=1", "--verbose=0", "--deterministic",
        "--mixed_precision=none",
    ]
    command = objstore.command(*store, os.path.join(REPO, "experiments", "pretrain.py"), *flags)
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _finish(process):
    _, errors = process.communicate(timeout=900)
    return process.returncode, errors


def _checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_killed_run_resumes_bit_identically_and_exports(store):
    photos = os.path.join(store[1], "..", "photos")
    os.makedirs(photos)
    write_smooth_photos(photos, 6)
    data = f"{BUCKET}/photos"
    for i, name in enumerate(sorted(os.listdir(photos))):
        # Half in a "sub-folder": the folder source lists recursively.
        tf.io.gfile.copy(os.path.join(photos, name), f"{data}/{'nested/' if i % 2 else ''}{name}")
    straight, killed = RunDir(f"{BUCKET}/straight"), RunDir(f"{BUCKET}/killed")

    # Killed while TensorFlow moves the step-4 checkpoint out of its `_temp` staging
    # folder: a rename here is a copy then a delete, and the kill lands between the two.
    processes = [
        _pretrain(store, straight.path, data),
        _pretrain(store, killed.path, data, kill_before="delete:checkpoints/ckpt-4_temp/"),
    ]
    (code, errors), (killed_code, _) = (_finish(p) for p in processes)
    assert code == 0, errors[-3000:]
    assert killed_code == -9
    assert killed.latest_step() == 2
    assert tf.io.gfile.glob(f"{killed.checkpoint_dir}/*_temp")  # Half-moved.

    code, errors = _finish(_pretrain(store, killed.path, data))
    assert code == 0, errors[-3000:]
    assert "Resumed from" in errors
    assert killed.latest_step() == 4
    assert not tf.io.gfile.glob(f"{killed.checkpoint_dir}/*_temp")
    expected = _checkpoint_tensors(straight.latest_checkpoint())
    resumed = _checkpoint_tensors(killed.latest_checkpoint())
    assert sorted(resumed) == sorted(expected)
    for name, value in expected.items():
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    assert not [
        name for name in storage.listdir(killed.path) + storage.listdir(killed.checkpoint_dir)
        if ".tmp" in name
    ]

    # The export script publishes to the store; the SavedModel loads from it.
    export = subprocess.run(
        objstore.command(
            *store, os.path.join(REPO, "export", "export_saved_model.py"),
            f"--model_dir={killed.path}", f"--export_dir={BUCKET}/serving",
            f"--sample_size={IMAGE_SIZE}",
        ),
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert storage.listdir(f"{BUCKET}/serving") == ["1"]
    images = sample_images(2, IMAGE_SIZE)[0]
    loaded = tf.saved_model.load(f"{BUCKET}/serving/1")
    features = loaded.signatures["serving_default"](images=tf.constant(images))["features"]
    encoder = load_encoder(killed.path)
    expected_features = encoder(tf.cast(images, tf.float32), training=False).numpy()
    np.testing.assert_allclose(features.numpy(), expected_features, atol=1e-4)


def test_restart_removes_what_a_killed_run_left(store):
    # What a run killed inside a rename leaves on an object store: the staging objects of
    # a checkpoint, TensorFlow's copy of the state file (its rename is a copy and a
    # delete here: plugins cannot tell TensorFlow that their move is not atomic), and a
    # temporary JSON of a dead process.
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = RunDir(f"{BUCKET}/leftovers")
    left = [
        f"{run.checkpoint_dir}/ckpt-4_temp/part-00000-of-00001.data-00000-of-00001",
        f"{run.checkpoint_dir}/checkpoint.tmp{'0123456789abcdef' * 2}",
        f"{run.path}/run_config.json.tmp-{dead.pid}",
    ]
    kept = [f"{run.checkpoint_dir}/checkpoint", f"{run.path}/run_config.json"]
    for path in left + kept:
        _write(path, "x")
    run.remove_stale_leftovers()
    assert [tf.io.gfile.exists(path) for path in left + kept] == [False] * 3 + [True] * 2
