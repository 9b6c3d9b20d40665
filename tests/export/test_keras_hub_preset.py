"""The keras-hub preset export: loads without vader_tf, feeds keras-hub tasks, restarts
pretraining, and refuses what it cannot write cleanly."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import vader_tf
from vader_tf.export import keras_hub_preset
from vader_tf.export.sample_images import sample_images
from vader_tf.models import backbone as backbone_lib
from vader_tf.run_dir import RunDir

IMAGE_SIZE = 64
STEP = 5
# A tiny ResNet (basic blocks, narrow) so a fit and a save take seconds.
TINY_RESNET = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 32, 32, 32],
    stackwise_num_blocks=[1, 1, 1, 1],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    use_pre_activation=False,
)
SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "export", "export_keras_hub_preset.py")


def _randomise_batch_norms(model, seed=0):
    """Non-trivial BN statistics, so a BN left out or misplaced shows in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.2, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, shape).astype("float32"))


def write_run(path, encoder, step=STEP, method="vader"):
    """A run directory holding `encoder` at checkpoint `step`."""
    run = RunDir(path)
    run.save_encoder_config(encoder)
    run.write_run_config({"method": method})
    checkpoint = tf.train.Checkpoint(encoder=encoder, step=tf.Variable(step, dtype=tf.int64))
    run.checkpoint_manager(checkpoint, max_to_keep=1).save(checkpoint_number=step)
    return run.path


def tiny_encoder():
    keras.utils.set_random_seed(0)
    encoder = vader_tf.build_encoder(
        "ResNetBackbone",
        backbone_config=TINY_RESNET,
        decoder_channels=8,
        head_hidden_dim=8,
        embedding_dim=8,
    )
    _randomise_batch_norms(encoder)
    return encoder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_run(str(tmp_path_factory.mktemp("tiny_run")), tiny_encoder())


@pytest.fixture(scope="module")
def tiny_preset(tiny_run, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("presets") / "tiny")
    keras_hub_preset.export_keras_hub_preset(tiny_run, path)
    return path


@pytest.fixture(scope="module")
def photos():
    images, source = sample_images(4, IMAGE_SIZE)
    assert source == "skimage"
    return images


def run_without_vader_tf(code, *args):
    """Runs `code` in a fresh Python that fails on any import of vader_tf."""
    guard = (
        "import sys\n"
        "class _NoVader:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vader_tf' or name.startswith('vader_tf.'):\n"
        "            raise ImportError('vader_tf must not be imported here')\n"
        "sys.meta_path.insert(0, _NoVader())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", guard + code, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vader_tf" not in "".join(m for m in result.stdout.split() if m.startswith("MOD:"))
    return result


def _run_pyramid(model_dir, images):
    """The run's own backbone levels on raw photos: the oracle of the preset."""
    encoder = vader_tf.load_encoder(model_dir)
    levels = {level: encoder.pyramid_outputs[level] for level in backbone_lib.PYRAMID_LEVELS}
    outputs = keras.Model(encoder.input, levels)(images.astype("float32"), training=False)
    return {level: np.asarray(value) for level, value in outputs.items()}


_PYRAMID_WITHOUT_VADER = """
import json, sys
import keras, keras_hub, numpy as np
preset, images_path, out_path = sys.argv[1:]
backbone = keras_hub.models.Backbone.from_preset(preset)
converter = keras_hub.layers.ImageConverter.from_preset(preset)
pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
images = np.load(images_path).astype("float32")
levels = pyramid(converter(images), training=False)
np.savez(out_path, **{k: np.asarray(v) for k, v in levels.items()})
print(type(backbone).__name__, sorted(levels))
print("MOD:" + ",".join(m for m in sys.modules if m.startswith("vader")))
"""


def _check_preset_matches_run(preset, model_dir, images, tmp_path, atol):
    images_path = str(tmp_path / "images.npy")
    np.save(images_path, images)
    out = str(tmp_path / "levels.npz")
    result = run_without_vader_tf(_PYRAMID_WITHOUT_VADER, preset, images_path, out)
    assert "P2" in result.stdout
    got = np.load(out)
    want = _run_pyramid(model_dir, images)
    for level in backbone_lib.PYRAMID_LEVELS:
        assert got[level].dtype == np.float32
        assert np.abs(want[level]).max() > 1e-2, f"{level} collapsed"
        np.testing.assert_allclose(got[level], want[level], atol=atol, rtol=0)


def test_preset_loads_without_vader_tf_and_matches_the_run(tiny_run, tiny_preset, photos, tmp_path):
    names = sorted(os.listdir(tiny_preset))
    assert names == sorted(
        ["config.json", "metadata.json", "model.weights.h5", "image_converter.json",
         keras_hub_preset.HEAD_FILE]
    )
    text = open(os.path.join(tiny_preset, "config.json")).read()
    assert "vader" not in text.lower() and '"float32"' in text
    metadata = json.load(open(os.path.join(tiny_preset, "metadata.json")))
    ours = metadata[keras_hub_preset.METADATA_KEY]
    assert "keras_hub_version" in metadata
    assert ours["package_version"] == vader_tf.__version__
    assert ours["model_dir"] == tiny_run and ours["checkpoint"].endswith(f"ckpt-{STEP}")
    assert ours["step"] == STEP and ours["method"] == "vader"
    _check_preset_matches_run(tiny_preset, tiny_run, photos, tmp_path, atol=1e-5)


def test_decoder_head_file_completes_the_encoder(tiny_run, tiny_preset, photos):
    encoder = vader_tf.load_encoder(tiny_run)
    backbone = vader_tf.build_backbone(preset=tiny_preset)
    head = keras.saving.load_model(os.path.join(tiny_preset, keras_hub_preset.HEAD_FILE))
    standardised = encoder.normalization(photos.astype("float32"))
    levels = backbone_lib.pyramid_model(backbone)(standardised, training=False)
    got = head(levels, training=False)["features"]
    want = encoder(photos.astype("float32"), training=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


_SEGMENTER_RELOAD = """
import sys
import keras, numpy as np
path, images_path, out_path = sys.argv[1:]
model = keras.saving.load_model(path)
np.save(out_path, model.predict(np.load(images_path), verbose=0))
print("MOD:" + ",".join(m for m in sys.modules if m.startswith("vader")))
"""


def test_deeplab_segmenter_fits_saves_and_reloads_without_vader_tf(tiny_preset, photos, tmp_path):
    import keras_hub  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.Backbone.from_preset(tiny_preset)
    converter = keras_hub.layers.ImageConverter.from_preset(tiny_preset)
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[1, 2],
        projection_filters=8,
    )
    preprocessor = keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(
        image_converter=keras_hub.layers.DeepLabV3ImageConverter(
            scale=converter.scale, offset=converter.offset
        )
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=deeplab, num_classes=2, preprocessor=preprocessor
    )
    segmenter.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = photos.astype("float32")
    masks = (images.mean(axis=-1, keepdims=True) > 128).astype("int32")  # 2 classes
    kernel = backbone.get_layer("conv1_conv").kernel
    before = np.array(kernel)
    history = segmenter.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert not np.allclose(np.array(kernel), before)  # The preset backbone was fine-tuned.
    want = segmenter.predict(images, verbose=0)
    assert want.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 2)

    path = str(tmp_path / "segmenter.keras")
    segmenter.save(path)
    images_path, out = str(tmp_path / "images.npy"), str(tmp_path / "predictions.npy")
    np.save(images_path, images)
    run_without_vader_tf(_SEGMENTER_RELOAD, path, images_path, out)
    np.testing.assert_allclose(np.load(out), want, atol=1e-5)


def test_build_encoder_from_preset_continues_pretraining(tiny_run, tiny_preset, tmp_path):
    from tests.training.helpers import small_config  # pylint: disable=import-outside-toplevel
    from vader_tf.training.pretrain import build_model, pretrain  # pylint: disable=import-outside-toplevel

    run_backbone = vader_tf.load_encoder(tiny_run).backbone
    encoder = vader_tf.build_encoder(backbone_preset=tiny_preset, decoder_channels=8)
    for got, want in zip(encoder.backbone.weights, run_backbone.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)

    config = small_config(
        tmp_path / "continued",
        None,
        data="samples",
        backbone_preset=tiny_preset,
        decoder_channels=8,
        train_steps=2,
    )
    # The new run's query and key networks start from the preset's weights.
    start = build_model(config)
    for network in (start.encoder, start.key_model):
        for got, want in zip(network.backbone.weights, run_backbone.weights):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)
    model, _ = pretrain(config)
    assert RunDir(config.model_dir).latest_step() == 2
    assert vader_tf.load_encoder(config.model_dir).backbone.count_params() == (
        run_backbone.count_params()
    )


def test_preset_on_ram_filesystem_is_read_afresh(tiny_run, tmp_path, monkeypatch):
    """A preset on another filesystem is written there and read back as it is now:
    keras-hub alone would cache the first copy it read under KERAS_HOME and keep
    serving it after the preset at that path is replaced."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    target = "ram://keras_hub_preset_test/tiny"
    keras_hub_preset.export_keras_hub_preset(tiny_run, target)
    assert tf.io.gfile.exists(os.path.join(target, "config.json"))
    first = vader_tf.build_encoder(backbone_preset=target, decoder_channels=8).backbone
    run_weights = vader_tf.load_encoder(tiny_run).backbone.get_weights()
    for got, want in zip(first.get_weights(), run_weights):
        np.testing.assert_array_equal(got, want)

    tf.io.gfile.rmtree(target)
    other = tiny_encoder()
    _randomise_batch_norms(other, seed=1)
    keras_hub_preset.export_keras_hub_preset(write_run(str(tmp_path / "other"), other), target)
    second = vader_tf.build_backbone(preset=target)
    for got, want in zip(second.get_weights(), other.backbone.get_weights()):
        np.testing.assert_array_equal(got, want)
    tf.io.gfile.rmtree(target)


# --- Refusals: one line, nothing written ---------------------------------------------


@keras.saving.register_keras_serializable(package="vader_tests")
class _CustomResNet(backbone_lib.keras_hub.models.ResNetBackbone):
    """A backbone family outside keras-hub (a user's subclass)."""


def _listing(path):
    return sorted(os.listdir(path))


def test_refusals_write_nothing(tiny_run, tmp_path):
    out = tmp_path / "out"
    empty_run = tmp_path / "no_checkpoint"
    RunDir(str(empty_run)).save_encoder_config(tiny_encoder())
    with pytest.raises(keras_hub_preset.PresetExportError, match="holds no checkpoint"):
        keras_hub_preset.export_keras_hub_preset(str(empty_run), str(out))
    assert _listing(tmp_path) == ["no_checkpoint"]

    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(keras_hub_preset.PresetExportError, match="not empty"):
        keras_hub_preset.export_keras_hub_preset(tiny_run, str(out))
    assert _listing(out) == ["keep.txt"] and _listing(tmp_path) == ["no_checkpoint", "out"]

    foreign = vader_tf.DenseEncoder(
        _CustomResNet(**TINY_RESNET, image_shape=(None, None, 3)),
        decoder_channels=8, head_hidden_dim=8, embedding_dim=8,
    )
    foreign_run = write_run(str(tmp_path / "foreign"), foreign)
    with pytest.raises(keras_hub_preset.PresetExportError, match=r"_CustomResNet .*cannot be expressed"):
        keras_hub_preset.export_keras_hub_preset(foreign_run, str(tmp_path / "new"))
    assert _listing(tmp_path) == ["foreign", "no_checkpoint", "out"]


def test_script_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, SCRIPT, f"--model_dir={tmp_path}", f"--preset_dir={tmp_path / 'p'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert lines == [
        f"export_keras_hub_preset.py: error: --model_dir {str(tmp_path)!r} holds no "
        f"checkpoint in {str(tmp_path / 'checkpoints')!r}; train first (or give a run "
        "that has one)."
    ]
    assert not (tmp_path / "p").exists()


def test_resnet50_converted_from_torch_moco(photos, tmp_path):
    """A run whose ResNet-50 came from a PyTorch MoCo checkpoint: its preset loads
    without vader_tf and its levels equal PyTorch's own on the same photos."""
    torch = pytest.importorskip("torch")
    from tests.models import test_torch_weights as reference  # pylint: disable=import-outside-toplevel
    from vader_tf.models import torch_weights  # pylint: disable=import-outside-toplevel

    model = reference._resnet50()  # pylint: disable=protected-access
    checkpoint = str(tmp_path / "moco_v2.pth.tar")
    torch.save(reference._moco_checkpoint(model), checkpoint)  # pylint: disable=protected-access
    weights = str(tmp_path / "moco_v2.weights.h5")
    torch_weights.convert_checkpoint(checkpoint, weights)
    encoder = vader_tf.build_encoder(
        "resnet50", backbone_weights=weights, decoder_channels=8, head_hidden_dim=8, embedding_dim=8
    )
    run = write_run(str(tmp_path / "run"), encoder, method="moco")
    preset = str(tmp_path / "preset")
    metadata = keras_hub_preset.export_keras_hub_preset(run, preset)
    assert metadata["backbone"] == "resnet50" and metadata["method"] == "moco"

    images = photos[:2]
    images_path, out = str(tmp_path / "images.npy"), str(tmp_path / "levels.npz")
    np.save(images_path, images)
    run_without_vader_tf(_PYRAMID_WITHOUT_VADER, preset, images_path, out)
    got = np.load(out)
    mean = np.array([0.485, 0.456, 0.406], "float32") * 255
    std = np.array([0.229, 0.224, 0.225], "float32") * 255
    standardised = (images.astype("float32") - mean) / std
    with torch.no_grad():
        want = model(torch.from_numpy(standardised.transpose(0, 3, 1, 2)))
    for level, torch_level in zip(backbone_lib.PYRAMID_LEVELS, want):
        want_level = torch_level.numpy().transpose(0, 2, 3, 1)
        scale = np.abs(want_level).max()
        assert scale > 1e-2
        assert np.abs(got[level] - want_level).max() / scale < reference.RELATIVE_TOLERANCE, level

    restarted = vader_tf.build_encoder(backbone="resnet50", backbone_preset=preset)
    for got_weight, want_weight in zip(restarted.backbone.weights, encoder.backbone.weights):
        np.testing.assert_array_equal(np.asarray(got_weight), np.asarray(want_weight))
