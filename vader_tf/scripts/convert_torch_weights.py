"""Converts a PyTorch ResNet checkpoint (MoCo v2, torchvision, DenseCL, PixPro) to Keras.

    vader-convert-torch-weights \
        --checkpoint=moco_v2_800ep_pretrain.pth.tar --output=moco_v2_r50.weights.h5

The output loads with `build_backbone("resnet50", weights=...)` or
`build_encoder(backbone="resnet50", backbone_weights=...)`. Prints what was mapped,
ignored and missing; exits with status 1, writing nothing, when the checkpoint does not
fit the backbone. Needs PyTorch (`pip install vader-tf[torch]`).
"""

import sys

from absl import flags

from vader_tf import cli, storage
from vader_tf.models import backbone as backbone_lib
from vader_tf.models import torch_weights

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "PyTorch checkpoint (.pth / .pth.tar) to convert.", required=True
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Keras weights file to write; must end with .weights.h5.", required=True
)
_BACKBONE = flags.DEFINE_enum(
    "backbone", "resnet50", sorted(backbone_lib.BACKBONE_CONFIGS), "Architecture."
)
_PREFIX = flags.DEFINE_string(
    "prefix",
    None,
    "Key prefix of the backbone in the checkpoint, e.g. 'module.encoder_q.'. Found "
    "automatically when unset.",
)
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle",
    False,
    "Also read checkpoints holding arbitrary Python objects. This runs code stored in the "
    "file: only for checkpoints you trust.",
)


def main(argv):
    del argv  # Unused.
    storage.check_writable_file(_OUTPUT.value, "output")
    try:
        report = torch_weights.convert_checkpoint(
            _CHECKPOINT.value,
            _OUTPUT.value,
            backbone=_BACKBONE.value,
            prefix=_PREFIX.value,
            allow_pickle=_ALLOW_PICKLE.value,
        )
    except torch_weights.CheckpointMismatchError as error:
        print(f"Nothing written. {error}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {_OUTPUT.value}")
    return 0


def run():
    """The `vader-convert-torch-weights` command (console entry point)."""
    cli.run(main)


if __name__ == "__main__":
    run()
