"""Backbones other than ResNet: keras-hub pyramid backbones by name, class + config or
preset directory, end to end at random initialisation (CSPNet), and the refusals."""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.models.encoder_checks import check_saved_model_with_dynamic_shapes, random_images
from tests.training.helpers import run_steps, synthetic_batch
from vader_tf.models import DenseEncoder, build_backbone, build_encoder
from vader_tf.models.backbone import BACKBONES, backbone_name
from vader_tf.training.optimizers import TorchSGD
from vader_tf.training.pretrain import PretrainConfig
from vader_tf.training.vader import VADeR

# A small CSPResNet: our `csp_resnet50` layout (timm's) with one block per stage and few
# channels.
TINY_CSP = dict(
    BACKBONES["csp_resnet50"][1],
    stem_filters=16,
    stackwise_depth=[1, 1, 1, 1],
    stackwise_num_filters=[16, 32, 32, 64],
)


def tiny_csp_encoder(**kwargs):
    return build_encoder(
        "CSPNetBackbone",
        backbone_config=TINY_CSP,
        decoder_channels=16,
        head_hidden_dim=16,
        embedding_dim=8,
        **kwargs,
    )


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return tiny_csp_encoder()


def test_csp_encoder_has_stride_4_unit_norm_features_and_pyramid_strides(encoder):
    assert isinstance(encoder.backbone, keras_hub.models.CSPNetBackbone)
    features = encoder(random_images(2, 64, 96)).numpy()
    assert features.shape == (2, 16, 24, 8)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)
    outputs = keras.Model(encoder.input, encoder.pyramid_outputs)(random_images(1, 64, 128))
    for level, stride in {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "decoder": 4}.items():
        assert tuple(outputs[level].shape[1:3]) == (64 // stride, 128 // stride), level


def test_csp_encoder_keras_file_round_trip(encoder, tmp_path):
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, DenseEncoder)
    assert isinstance(restored.backbone, keras_hub.models.CSPNetBackbone)
    assert json.loads(json.dumps(restored.get_config())) == json.loads(
        json.dumps(encoder.get_config())
    )
    images = random_images(1, 64, 96, seed=1)
    np.testing.assert_allclose(restored(images).numpy(), encoder(images).numpy(), atol=1e-6)


def test_csp_encoder_saved_model_with_dynamic_shapes(encoder, tmp_path):
    check_saved_model_with_dynamic_shapes(encoder, tmp_path, [(96, 64), (32, 160)])


def test_vader_trains_a_csp_encoder():
    keras.utils.set_random_seed(0)
    model = VADeR(
        tiny_csp_encoder(), queue_size=64, temperature=0.2, momentum=0.9, bn_groups=1,
        shuffle_bn=False, queue_points_per_image=4,
    )
    model.compile(optimizer=TorchSGD(0.1, momentum=0.9))
    model.optimizer.build(model.query_model.trainable_variables)
    before = [v.numpy().copy() for v in model.query_model.trainable_variables]
    metrics = run_steps(
        model, tf.distribute.get_strategy(), [synthetic_batch(seed=s) for s in range(2)]
    )
    assert all(np.isfinite(step["loss"]) for step in metrics), metrics
    after = [v.numpy() for v in model.query_model.trainable_variables]
    backbone_variables = {id(v) for v in model.encoder.backbone.trainable_variables}
    moved = [
        not np.allclose(a, b)
        for v, a, b in zip(model.query_model.trainable_variables, before, after)
        if id(v) in backbone_variables
    ]
    assert moved and all(moved)
    assert int(model.queue_pointer.numpy()) == 2 * 4 * 4


def test_csp_resnet50_short_name_builds_and_is_recognised():
    backbone = build_backbone("csp_resnet50")
    assert isinstance(backbone, keras_hub.models.CSPNetBackbone)
    assert backbone_name(backbone) == "csp_resnet50"
    PretrainConfig(backbone="csp_resnet50").validate()


def test_local_preset_directory(encoder, tmp_path):
    encoder.backbone.save_to_preset(str(tmp_path))
    backbone = build_backbone(preset=str(tmp_path))
    assert isinstance(backbone, keras_hub.models.CSPNetBackbone)
    for a, b in zip(backbone.weights, encoder.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_tensorflow_same_padding_is_refused_with_its_offsets():
    # keras-hub's DenseNet pads its strided stem convolution and pooling "same" and
    # downsamples by 2x2 average pooling: tests/models/test_grid_alignment.py measures
    # its cells 3, 5, 9 and 17 input pixels right of (and below) the grid.
    with pytest.raises(ValueError, match=r"off the grid.*'P2': \(3, 3\).*'P5': \(17, 17\)"):
        build_encoder("DenseNetBackbone", backbone_config=dict(stackwise_num_repeats=[1] * 4))


def test_wrong_strides_and_missing_levels_are_refused():
    # CSPDarkNet's stages are named P2..P6 but sit at strides 2..32.
    darknet = dict(TINY_CSP, stem_strides=1, stem_pooling=None, stackwise_depth=[1] * 5,
                   stackwise_strides=[2] * 5, stackwise_num_filters=[8, 16, 16, 32, 32])
    with pytest.raises(ValueError, match=r"strides \{'P2': 2, 'P3': 4, 'P4': 8, 'P5': 16\}"):
        build_backbone("CSPNetBackbone", config=darknet)
    three_stages = dict(TINY_CSP, stackwise_depth=[1] * 3, stackwise_strides=[1, 2, 2])
    with pytest.raises(ValueError, match=r"lack \['P5'\]"):
        build_backbone("CSPNetBackbone", config=three_stages)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="csp_resnet50"):
        build_backbone("mobilenet")
    with pytest.raises(ValueError, match="NoSuchBackbone"):
        build_backbone("NoSuchBackbone", config={})
    with pytest.raises(ValueError, match="backbone"):
        PretrainConfig(backbone="CSPNetBackbone").validate()


def test_torch_weights_convert_to_resnets_only():
    from vader_tf.models.torch_weights import convert_state_dict

    with pytest.raises(ValueError, match="ResNet backbones only.*csp_resnet50"):
        convert_state_dict({}, backbone="csp_resnet50")


def test_branches_off_each_other_are_refused():
    # ResNet-vd: the shortcut's 2x2/2 average pooling centres its cells half a cell
    # (2 pixels at stride 4) from the 3x3/2 convolution's on the main branch.
    vd = dict(
        input_conv_filters=[8], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1] * 4, stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block_vd", use_pre_activation=False,
    )
    with pytest.raises(ValueError, match=r"ResNetBackbone: branches meeting at Add .*2\.0"):
        build_backbone("ResNetBackbone", config=vd)


class _Subsample(keras.layers.Layer):
    """Keeps every second row and column: a stride-2 layer without a `strides` setting."""

    def call(self, x):
        return x[:, ::2, ::2]

    def compute_output_shape(self, shape):
        return (shape[0], *[None if n is None else (n + 1) // 2 for n in shape[1:3]], shape[3])


class _HiddenStridesBackbone(keras_hub.models.FeaturePyramidBackbone):
    def __init__(self, **kwargs):
        images = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(images)
        levels = {}
        for level in ("P1", "P2", "P3", "P4", "P5"):
            x = _Subsample()(x)
            levels[level] = x
        super().__init__(inputs=images, outputs=x, **kwargs)
        self.pyramid_outputs = levels


def test_a_layer_that_downsamples_unseen_is_refused():
    with pytest.raises(ValueError, match="P2 has stride 4 but its layers account for"):
        DenseEncoder(_HiddenStridesBackbone())
