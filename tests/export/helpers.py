"""Constants and builders shared by the export tests."""

import vader_tf

IMAGE_SIZE = 64
CHECKPOINT_STEP = 7
EMBEDDING_DIM = 16
# Channels of the served `features`: the decoder's width.
FEATURE_DIM = 32


def small_encoder():
    """A small randomly initialised resnet18 encoder (narrow decoder and head)."""
    return vader_tf.build_encoder(
        "resnet18", decoder_channels=FEATURE_DIM, head_hidden_dim=32, embedding_dim=EMBEDDING_DIM
    )
