"""The image-level MoCo v2 baseline, on the same backbone, data and trainer as VADeR.

A contrastive row is an image: global average pooling of C5, a two-layer MLP head and L2
normalisation give one embedding per view; the positive is the other view's key embedding,
the negatives a queue of key embeddings of earlier images. Both directions are used, as
for VADeR, so the two methods cost the same number of loss rows per image pair (up to P);
`symmetric_loss=False` gives MoCo v2's own one-direction step (queries of view 1, keys of
view 2).

The query network wraps a full `DenseEncoder` (whose decoder and head MoCo never trains)
so that a MoCo run is saved, exported and evaluated exactly like a VADeR run.
"""

import keras
import tensorflow as tf

from vader_tf.models.encoder import DenseEncoder
from vader_tf.models.layers import L2Normalize
from vader_tf.training.methods import register_method
from vader_tf.training.momentum_contrast import ContrastiveTerm, MomentumContrast


def image_embedding_model(
    encoder, hidden_dim=None, embedding_dim=128, name="image_embedder", prefix="", level="P5"
):
    """Images -> unit-norm global embeddings, sharing `encoder`'s backbone layers.

    `prefix` starts the head's layer names (a model that also outputs the encoder's own
    `embedding` needs one); `level` is the `encoder.pyramid_outputs` map that is pooled
    (C5 for MoCo v2).
    """
    c5 = encoder.pyramid_outputs[level]
    hidden_dim = hidden_dim or c5.shape[-1]
    x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}global_pool")(c5)
    x = keras.layers.Dense(hidden_dim, activation="relu", name=f"{prefix}mlp_hidden")(x)
    x = keras.layers.Dense(embedding_dim, name=f"{prefix}mlp_output")(x)
    return keras.Model(encoder.input, L2Normalize(name=f"{prefix}embedding")(x), name=name)


@register_method("moco")
class MoCo(MomentumContrast):
    """Image-level momentum contrast (MoCo v2) over a `DenseEncoder`'s backbone."""

    def __init__(self, encoder, embedding_dim=128, hidden_dim=None, **kwargs):
        key_encoder = DenseEncoder.from_config({**encoder.get_config(), "name": "key_encoder"})
        query_model = image_embedding_model(encoder, hidden_dim, embedding_dim)
        key_model = image_embedding_model(key_encoder, hidden_dim, embedding_dim, "key_embedder")
        kwargs.setdefault("name", "moco")
        super().__init__(query_model, key_model, embedding_dim, **kwargs)
        self.encoder = encoder

    @classmethod
    def from_pretrain_config(cls, encoder, config, **common):
        return cls(encoder, embedding_dim=config.embedding_dim, **common)

    def contrastive_rows(self, data, query_outputs, key_outputs):
        return (image_term(self.terms[0].name, self.directions, query_outputs, key_outputs),)


def select_outputs(outputs, key):
    """One output of each view's dict of a multi-output network (None where the network
    did not run on the view)."""
    return [None if views is None else views[key] for views in outputs]


def image_term(name, directions, query_embeddings, key_embeddings):
    """MoCo's term: each image's query embedding against the other view's key embedding.

    Args:
        name: the term's name.
        directions: the model's `(query_view, key_view)` pairs.
        query_embeddings, key_embeddings: per view, `[B, D]` unit-norm embeddings (or
            None for a view the network did not run on).
    """
    queries = tf.concat([query_embeddings[q] for q, _ in directions], axis=0)
    positives = tf.concat([key_embeddings[k] for _, k in directions], axis=0)
    weights = tf.ones(tf.shape(queries)[:1], tf.float32)
    key_2 = key_embeddings[1]
    # Every image is a valid row: MoCo needs no overlap between its two views.
    return ContrastiveTerm(
        name, queries, positives, weights, key_2, tf.ones(tf.shape(key_2)[:1], tf.bool)
    )
