"""DenseCL: dense contrastive learning (Wang et al., CVPR 2021, arXiv 2011.09157).

Two contrastive terms on one backbone, each with its own queue:

- global: MoCo v2 on the same C5 (global pooling, two-layer MLP, unit embedding; the
  positive is the other view's key embedding, the negatives the `queue`);
- dense: a two-layer 1x1-convolution MLP on C5 gives an embedding per C5 cell. The
  positive of a query cell is the key network's dense embedding at the cell of the other
  view whose *backbone* C5 feature (key network) is most cosine-similar to the query
  cell's backbone C5 feature (argmax matching, no geometry). The negatives are the
  `dense_queue`, which receives one key per image: the other view's dense key map
  averaged over its cells, then normalised.

The loss is `(1 - loss_weight) * global + loss_weight * dense` (DenseCL's lambda = 0.5),
each term the mean InfoNCE over its rows at the shared temperature. The views are MoCo's
independent crops (no overlap needed). Both directions are trained by default, as for
VADeR and MoCo; `symmetric_loss=False` is DenseCL's own one-direction step.

The query network wraps a full `DenseEncoder` (whose decoder and head DenseCL never
trains) so that a DenseCL run is saved, exported and evaluated like the other methods.
"""

import keras
import tensorflow as tf

from vader_tf.models.encoder import DenseEncoder
from vader_tf.training.methods import register_method
from vader_tf.training.moco import image_embedding_model, image_term, select_outputs
from vader_tf.training.momentum_contrast import ContrastiveTerm, MomentumContrast, TermSpec


def densecl_model(encoder, hidden_dim=None, embedding_dim=128, name="densecl_heads"):
    """Images -> `{"global": [B, D] unit, "dense": [B, h, w, D], "backbone": C5}`.

    Shares `encoder`'s backbone layers; `global` is MoCo's head (`image_embedding_model`),
    `dense` the 1x1-convolution MLP on C5 (not normalised; the method normalises it).
    """
    global_embedding = image_embedding_model(encoder, hidden_dim, embedding_dim).output
    c5 = encoder.pyramid_outputs["P5"]
    hidden_dim = hidden_dim or c5.shape[-1]
    x = keras.layers.Conv2D(hidden_dim, 1, activation="relu", name="dense_mlp_hidden")(c5)
    dense = keras.layers.Conv2D(embedding_dim, 1, name="dense_mlp_output")(x)
    return keras.Model(
        encoder.input, {"global": global_embedding, "dense": dense, "backbone": c5}, name=name
    )


def _unit_cells(feature_map):
    """`[B, h, w, C]` -> `[B, h * w, C]` float32, each cell normalised to unit length."""
    feature_map = tf.cast(feature_map, tf.float32)
    shape = tf.shape(feature_map)
    cells = tf.reshape(feature_map, [shape[0], shape[1] * shape[2], shape[3]])
    return tf.math.l2_normalize(cells, axis=-1)


@register_method("densecl")
class DenseCL(MomentumContrast):
    """DenseCL's global + dense momentum contrast over a `DenseEncoder`'s backbone.

    Args:
        encoder: the query `DenseEncoder`; the key encoder is built from its config.
        embedding_dim: channels of the global and dense embeddings.
        hidden_dim: hidden width of both heads (default: C5's channels).
        loss_weight: lambda, the dense term's weight (the global term gets 1 - lambda).
        queue_size: negatives kept in each of the two queues.
        **kwargs: other `MomentumContrast` arguments (temperature, momentum, ...).
    """

    needs_overlapping_views = False

    def __init__(
        self,
        encoder,
        embedding_dim=128,
        hidden_dim=None,
        loss_weight=0.5,
        queue_size=65536,
        **kwargs,
    ):
        if not 0.0 <= loss_weight <= 1.0:
            raise ValueError(f"loss_weight must be in [0, 1], got {loss_weight!r}.")
        key_encoder = DenseEncoder.from_config({**encoder.get_config(), "name": "key_encoder"})
        query_model = densecl_model(encoder, hidden_dim, embedding_dim)
        key_model = densecl_model(key_encoder, hidden_dim, embedding_dim, "key_densecl_heads")
        terms = (
            TermSpec("global", queue_size, embedding_dim, 1.0 - loss_weight),
            TermSpec("dense", queue_size, embedding_dim, loss_weight),
        )
        kwargs.setdefault("name", "densecl")
        super().__init__(query_model, key_model, embedding_dim, queue_size, terms=terms, **kwargs)
        self.encoder = encoder
        self.loss_weight = loss_weight

    @classmethod
    def from_pretrain_config(cls, encoder, config, **common):
        return cls(
            encoder,
            embedding_dim=config.embedding_dim,
            loss_weight=config.densecl_loss_weight,
            **common,
        )

    def contrastive_rows(self, data, query_outputs, key_outputs):
        global_term = image_term(
            "global",
            self.directions,
            select_outputs(query_outputs, "global"),
            select_outputs(key_outputs, "global"),
        )
        queries, positives = [], []
        for query_view, key_view in self.directions:
            query, key = query_outputs[query_view], key_outputs[key_view]
            similarity = tf.einsum(
                "bic,bjc->bij", _unit_cells(query["backbone"]), _unit_cells(key["backbone"])
            )
            match = tf.argmax(similarity, axis=2)  # [B, cells]: the key cell of each query cell
            queries.append(_unit_cells(query["dense"]))
            positives.append(tf.gather(_unit_cells(key["dense"]), match, batch_dims=1))
        dim = tf.shape(queries[0])[-1]
        queries = tf.reshape(tf.concat(queries, axis=0), [-1, dim])
        positives = tf.reshape(tf.concat(positives, axis=0), [-1, dim])
        # One key per image of view 2: its dense key map averaged over the cells.
        dense_key_2 = tf.cast(key_outputs[1]["dense"], tf.float32)
        pooled_keys = tf.math.l2_normalize(tf.reduce_mean(dense_key_2, axis=[1, 2]), axis=-1)
        dense_term = ContrastiveTerm(
            "dense",
            queries,
            positives,
            tf.ones(tf.shape(queries)[:1], tf.float32),
            pooled_keys,
            tf.ones(tf.shape(pooled_keys)[:1], tf.bool),
        )
        return global_term, dense_term
