"""The dense encoder: pyramid backbone + FPN decoder + per-pixel projection head.

It maps RGB images with pixel values in [0, 255] and any H, W that are multiples of 32 to
a stride-4 map whose pixels are L2-normalised (see `vader_tf.ops.grid`). Input
standardisation is part of the model, so exported graphs take raw pixels.

Three stride-4 representations come out of it (`REPRESENTATIONS`), all unit norm per cell:

- `"fused"`: the L2-normalised decoder output joined with the backbone's `P4` level
  (resized to stride 4 on the grid of `vader_tf.ops.grid`, L2-normalised), weighted 1 and
  0.25 (`FUSED_PARTS`; `decoder_channels` + P4's channels). The representation served to
  users (`vader_tf.serving_contract`, `vader_tf.load_encoder`): the small study measures
  it best on semantics and propagation (RESULTS.md, docs/evaluation.md).
- `"decoder"`: the FPN decoder's output, L2-normalised per pixel (`decoder_channels`
  channels); the most precise for correspondence.
- `"embedding"`: the projection head's output (`embedding_dim` channels), the training
  embedding the contrastive loss is computed on.

The `output` argument says which one the model returns; the weights are the same.
"""

import keras

from vader_tf.models import backbone as backbone_lib
from vader_tf.models.layers import (
    BatchNormalization,
    ImageNormalization,
    JoinUnitMaps,
    L2Normalize,
    ResizeToReference,
    use_fused_batch_norm,
)
from vader_tf.ops import grid as grid_lib

# Input height and width must be multiples of this (the C5 stride).
INPUT_MULTIPLE = 32

DECODER = "decoder"
EMBEDDING = "embedding"
FUSED = "fused"
REPRESENTATIONS = (DECODER, EMBEDDING, FUSED)
# The parts of `fused` and their weights: the decoder output and a backbone level, each
# L2-normalised on the stride-4 grid, joined by `layers.join_unit_maps` (cell similarities
# are the weighted mean of the parts'). The weight was chosen on the tuning sets (CamVid
# val, the shared DAVIS sequences; results/served_taps/).
FUSED_PARTS = ((DECODER, 1.0), ("P4", 0.25))
# The same map as an evaluation tap (`vader_tf.eval.encoders`): "decoder+P4@0.25".
FUSED_TAP = "+".join(name if w == 1.0 else f"{name}@{w:g}" for name, w in FUSED_PARTS)
# Stride of every named output: the backbone levels, and the stride-4 representations.
OUTPUT_STRIDES = {
    **backbone_lib.PYRAMID_STRIDES,
    **{name: grid_lib.FEATURE_STRIDE for name in REPRESENTATIONS},
}


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
        embedding_dim: channels D of the projection head's embedding.
        output: which representation the model returns, one of `REPRESENTATIONS`:
            "embedding" (the default, what training methods consume), "fused" (what
            `vader_tf.load_encoder` and the exports serve) or "decoder" (the
            L2-normalised decoder output). Configs without it (runs saved before it
            existed) get the default; it changes no weight.

    Attributes:
        pyramid_outputs: dict of the symbolic outputs "P2".."P5" (backbone levels) and
            "decoder" (the FPN output before the head, not normalised), for building
            fine-tuning models:
            `keras.Model(encoder.input, encoder.pyramid_outputs["decoder"])`.
        representations: dict of the three symbolic unit-norm stride-4 outputs,
            "decoder", "embedding" and "fused" (see the module docstring), whatever
            `output` is.
        grid: `{name: {"stride": s, "cell_centre": [y, x]}}` for every named output
            ("P2".."P5", "decoder", "embedding", "fused"): where cell (0, 0) is centred, in input
            pixel coordinates (`vader_tf.ops.grid.declare_grid`). Also in `get_config`.

    Example:
    ```python
    encoder = DenseEncoder(build_backbone("resnet18"), output="fused")
    features = encoder(np.zeros((2, 224, 224, 3), "float32"))  # (2, 56, 56, 128 + 256)
    ```
    """

    def __init__(
        self,
        backbone,
        decoder_channels=128,
        head_hidden_dim=128,
        embedding_dim=128,
        output=EMBEDDING,
        **kwargs,
    ):
        if output not in REPRESENTATIONS:
            raise ValueError(f"output must be one of {REPRESENTATIONS}, got {output!r}.")
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
        # Weightless: renaming or adding these changes no checkpoint or saved weight.
        self.l2_normalize = L2Normalize(name=EMBEDDING)
        self.decoder_normalize = L2Normalize(name="decoder_normalized")
        levels_in_fused = [name for name, _ in FUSED_PARTS if name != DECODER]
        self.fused_resize = {
            level: ResizeToReference(name=f"fused_resize_{level}") for level in levels_in_fused
        }
        self.fused_normalize = {
            level: L2Normalize(name=f"fused_normalize_{level}") for level in levels_in_fused
        }
        self.fused_join = JoinUnitMaps([w for _, w in FUSED_PARTS], name=FUSED)

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
        representations = self.represent(levels, decoder_output)
        super().__init__(inputs=images, outputs=representations[output], **kwargs)

        # === Config ===
        self.decoder_channels = decoder_channels
        self.head_hidden_dim = head_hidden_dim
        self.embedding_dim = embedding_dim
        self.output_name = output
        self.pyramid_outputs = {**levels, DECODER: decoder_output}
        self.representations = representations
        self.grid = grid_lib.declare_grid(OUTPUT_STRIDES)

    def represent(self, levels, decoder_output):
        """The three representations (`REPRESENTATIONS`) of the decoder's output
        `decoder_output` (before normalisation) and the backbone `levels` it came from."""
        decoder = self.decoder_normalize(decoder_output)
        fused_parts = {DECODER: decoder}
        for level in self.fused_resize:
            fused_parts[level] = self.fused_normalize[level](
                self.fused_resize[level](levels[level], decoder_output)
            )
        return {
            DECODER: decoder,
            EMBEDDING: self.l2_normalize(self.head_output(self.head_hidden(decoder_output))),
            FUSED: self.fused_join([fused_parts[name] for name, _ in FUSED_PARTS]),
        }

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
            "output": self.output_name,
            # Declarative (derived from the architecture): dropped by `from_config`.
            "grid": self.grid,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("grid", None)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)

    def with_output(self, output):
        """This encoder returning `output` (one of `REPRESENTATIONS`), same weights.

        Returns `self` when it already does, else a new `DenseEncoder` with a copy of the
        weights (built under the dtype policy in effect, like `from_config`).
        """
        if output == self.output_name:
            return self
        encoder = type(self).from_config({**self.get_config(), "output": output})
        encoder.set_weights(self.get_weights())
        return encoder


def build_encoder(
    backbone="resnet18",
    backbone_preset=None,
    backbone_weights=None,
    backbone_config=None,
    decoder_channels=128,
    head_hidden_dim=128,
    embedding_dim=128,
    output=EMBEDDING,
    name="dense_encoder",
):
    """Builds a `DenseEncoder` around a backbone given as `build_backbone` takes it:
    a short name, a preset, or a keras-hub class name with `backbone_config`; `output`
    as for `DenseEncoder`."""
    return DenseEncoder(
        backbone_lib.build_backbone(
            backbone, preset=backbone_preset, weights=backbone_weights, config=backbone_config
        ),
        decoder_channels=decoder_channels,
        head_hidden_dim=head_hidden_dim,
        embedding_dim=embedding_dim,
        output=output,
        name=name,
    )
