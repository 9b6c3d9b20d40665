"""ResNet backbones with pyramid outputs C2..C5, built on keras-hub's `ResNetBackbone`.

The layouts match torchvision's ResNet v1.5 (stride on the 3x3 convolution of the
bottleneck, explicit zero padding), so weights converted from PyTorch (MoCo v2,
torchvision, DenseCL) load one-to-one; see `vader_tf.models.torch_weights`.
"""

import keras
import keras_hub

# Constructor arguments of `keras_hub.models.ResNetBackbone` per architecture.
BACKBONE_CONFIGS = {
    "resnet18": dict(
        stackwise_num_blocks=[2, 2, 2, 2],
        block_type="basic_block",
    ),
    "resnet34": dict(
        stackwise_num_blocks=[3, 4, 6, 3],
        block_type="basic_block",
    ),
    "resnet50": dict(
        stackwise_num_blocks=[3, 4, 6, 3],
        block_type="bottleneck_block",
    ),
    "resnet101": dict(
        stackwise_num_blocks=[3, 4, 23, 3],
        block_type="bottleneck_block",
    ),
}

# The pyramid levels the decoder reads, finest first, and their strides.
PYRAMID_LEVELS = ("P2", "P3", "P4", "P5")


def build_backbone(name="resnet18", preset=None, weights=None):
    """Builds a ResNet backbone with dynamic input size and pyramid outputs P2..P5.

    Args:
        name: one of `BACKBONE_CONFIGS` ("resnet18", "resnet34", "resnet50", "resnet101").
            Ignored when `preset` is given.
        preset: optional keras-hub preset name or local preset directory (for example
            "resnet_50_imagenet"); loading a named preset needs internet access.
        weights: optional path to a backbone weights file (`*.weights.h5`), e.g. one
            written by `export/convert_torch_weights.py`.

    Returns:
        A `keras_hub.models.ResNetBackbone` whose `pyramid_outputs` hold P2..P5.
    """
    if preset is not None:
        backbone = keras_hub.models.ResNetBackbone.from_preset(preset)
    else:
        if name not in BACKBONE_CONFIGS:
            raise ValueError(
                f"Unknown backbone {name!r}; expected one of {sorted(BACKBONE_CONFIGS)}."
            )
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_strides=[1, 2, 2, 2],
            use_pre_activation=False,
            image_shape=(None, None, 3),
            **BACKBONE_CONFIGS[name],
        )
    if weights is not None:
        backbone.load_weights(weights)
    return backbone


def backbone_name(backbone):
    """The `BACKBONE_CONFIGS` key describing `backbone`, or None for other layouts."""
    for name, config in BACKBONE_CONFIGS.items():
        if (
            list(backbone.stackwise_num_blocks) == config["stackwise_num_blocks"]
            and backbone.block_type == config["block_type"]
        ):
            return name
    return None


def pyramid_model(backbone):
    """A functional model mapping images to the dict of pyramid levels P2..P5."""
    return keras.Model(
        backbone.inputs,
        {level: backbone.pyramid_outputs[level] for level in PYRAMID_LEVELS},
        name=f"{backbone.name}_pyramid",
    )
