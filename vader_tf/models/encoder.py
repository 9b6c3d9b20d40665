"""The dense encoder: pyramid backbone + FPN decoder + per-pixel projection head.

It maps RGB images with pixel values in [0, 255] and any H, W that are multiples of 32 to
a `[B, H/4, W/4, embedding_dim]` map whose pixels are L2-normalised (stride 4, see
`vader_tf.ops.grid`). Input standardisation is part of the model, so exported graphs take
raw pixels.
"""

import keras

from vader_tf.models import backbone as backbone_lib
from vader_tf.models.layers import (
    BatchNormalization,
    ImageNormalization,
    L2Normalize,
    ResizeToReference,
    use_fused_batch_norm,
)

# Input height and width must be multiples of this (the C5 stride).
INPUT_MULTIPLE = 32


@keras.saving.register_keras_serializable(package="vader_tf")
class DenseEncoder(keras.Model):
    """Pyramid backbone (ResNet by default) + FPN decoder + dense projection head, as in VADeR.

    The decoder merges C2..C5 top-down: a 1x1 lateral convolution per level, bilinear
    upsampling of the coarser sum, addition, then a 3x3 convolution (BN, ReLU) on the
    stride-4 result. The head is two 1x1 convolutions (the per-pixel analogue of MoCo v2's
    MLP head) followed by L2 normalisation. Every batch norm, the backbone's included, is
    our `layers.BatchNormalization`: under mixed precision it keeps activations in bfloat16.

    Args:
        backbone: a keras-hub `FeaturePyramidBackbone` whose `pyramid_outputs` hold
            "P2".."P5" at strides 4..32 on the grid of `vader_tf.ops.grid` (checked by
            `vader_tf.models.backbone.check_pyramid`), e.g. from `build_backbone`.
        decoder_channels: width of the FPN decoder.
        head_hidden_dim: width of the hidden layer of the projection head.
        embedding_dim: channels D of the output embedding.

    Attributes:
        pyramid_outputs: dict of the symbolic outputs "P2".."P5" (backbone levels) and
            "decoder" (the FPN output before the head), for building fine-tuning models:
            `keras.Model(encoder.input, encoder.pyramid_outputs["decoder"])`.

    Example:
    ```python
    encoder = DenseEncoder(build_backbone("resnet18"))
    features = encoder(np.zeros((2, 224, 224, 3), "float32"))  # (2, 56, 56, 128)
    ```
    """

    def __init__(
        self,
        backbone,
        decoder_channels=128,
        head_hidden_dim=128,
        embedding_dim=128,
        **kwargs,
    ):
        backbone_lib.check_pyramid(backbone)
        # === Layers ===
        # Batch norms that stay in bfloat16/float16 under mixed precision (float32 as is).
        self.backbone = use_fused_batch_norm(backbone)
        self.pyramid = backbone_lib.pyramid_model(backbone)
        self.normalization = ImageNormalization(name="image_normalization")
        self.laterals = {
            level: keras.layers.Conv2D(decoder_channels, 1, name=f"decoder_lateral_{level}")
            for level in backbone_lib.PYRAMID_LEVELS
        }
        self.upsample = {
            level: ResizeToReference(name=f"decoder_upsample_to_{level}")
            for level in backbone_lib.PYRAMID_LEVELS[:-1]
        }
        self.smooth_conv = keras.layers.Conv2D(
            decoder_channels, 3, padding="same", use_bias=False, name="decoder_smooth_conv"
        )
        self.smooth_bn = BatchNormalization(
            epsilon=1e-5, momentum=0.9, name="decoder_smooth_bn"
        )
        self.head_hidden = keras.layers.Conv2D(
            head_hidden_dim, 1, activation="relu", name="head_hidden"
        )
        self.head_output = keras.layers.Conv2D(embedding_dim, 1, name="head_output")
        self.l2_normalize = L2Normalize(name="features")

        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        levels = self.pyramid(self.normalization(images))
        x = self.laterals["P5"](levels["P5"])
        for level in reversed(backbone_lib.PYRAMID_LEVELS[:-1]):
            lateral = self.laterals[level](levels[level])
            x = keras.layers.Add(name=f"decoder_merge_{level}")(
                [lateral, self.upsample[level](x, lateral)]
            )
        x = self.smooth_conv(x)
        x = self.smooth_bn(x)
        decoder_output = keras.layers.ReLU(name="decoder_output")(x)
        features = self.l2_normalize(self.head_output(self.head_hidden(decoder_output)))
        super().__init__(inputs=images, outputs=features, **kwargs)

        # === Config ===
        self.decoder_channels = decoder_channels
        self.head_hidden_dim = head_hidden_dim
        self.embedding_dim = embedding_dim
        self.pyramid_outputs = {**levels, "decoder": decoder_output}

    def get_config(self):
        # Only our own arguments: the functional graph is rebuilt by `__init__`. The
        # saved architecture is precision-agnostic: keras-hub records the backbone's
        # dtype policy, which would rebuild a mixed-precision run's backbone in bfloat16
        # under a float32 decoder; without it, the whole encoder follows the global policy
        # in effect where it is rebuilt (float32 for evaluation, export and fine-tuning
        # unless the user sets one), as the decoder always did.
        backbone = keras.layers.serialize(self.backbone)
        backbone["config"].pop("dtype", None)
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": backbone,
            "decoder_channels": self.decoder_channels,
            "head_hidden_dim": self.head_hidden_dim,
            "embedding_dim": self.embedding_dim,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


def build_encoder(
    backbone="resnet18",
    backbone_preset=None,
    backbone_weights=None,
    backbone_config=None,
    decoder_channels=128,
    head_hidden_dim=128,
    embedding_dim=128,
    name="dense_encoder",
):
    """Builds a `DenseEncoder` around a backbone given as `build_backbone` takes it:
    a short name, a preset, or a keras-hub class name with `backbone_config`."""
    return DenseEncoder(
        backbone_lib.build_backbone(
            backbone, preset=backbone_preset, weights=backbone_weights, config=backbone_config
        ),
        decoder_channels=decoder_channels,
        head_hidden_dim=head_hidden_dim,
        embedding_dim=embedding_dim,
        name=name,
    )
