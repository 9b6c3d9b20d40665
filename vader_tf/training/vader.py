"""VADeR: pixel-level momentum contrast (Pinheiro et al., NeurIPS 2020).

A contrastive row is a matched pixel: the query is the query network's feature at a scene
point in one view, its positive the key network's feature at the same scene point in the
other view, and the negatives the queue of key pixels from earlier batches (other images).
Both directions (view1 -> view2 and view2 -> view1) are used, or only view1 -> view2
with `symmetric_loss=False`.
"""

import tensorflow as tf

from vader_tf.models.encoder import DenseEncoder
from vader_tf.ops.sampling import sample_points
from vader_tf.training.methods import register_method
from vader_tf.training.momentum_contrast import ContrastiveTerm, MomentumContrast


def _sample_unit(feature_map, points):
    """Bilinear samples at grid points, re-normalised to unit length, as `[B, P, D]`."""
    sampled = sample_points(tf.cast(feature_map, tf.float32), points)
    return tf.math.l2_normalize(sampled, axis=-1)


@register_method("vader")
class VADeR(MomentumContrast):
    """Pixel-level momentum contrast over a `DenseEncoder`.

    Args:
        encoder: the query `DenseEncoder`; the key encoder is built from its config.
        queue_points_per_image: how many key pixels of each image enter the queue per
            step (the first ones of its matched points, which are drawn at random); pairs
            that are not `valid` enqueue nothing.
        **kwargs: `MomentumContrast` arguments (queue size, temperature, momentum, ...).

    The batch is the dict made by `vader_tf.data.pipeline.two_view_dataset`: `view1`,
    `view2` `[B, S, S, 3]`, `points1`, `points2` `[B, P, 2]` grid coordinates of the same
    scene points in each view, and `valid` `[B]` (pairs without enough overlap count zero).
    """

    def __init__(self, encoder, queue_points_per_image=16, **kwargs):
        key_encoder = DenseEncoder.from_config({**encoder.get_config(), "name": "key_encoder"})
        kwargs.setdefault("name", "vader")
        super().__init__(encoder, key_encoder, encoder.embedding_dim, **kwargs)
        self.encoder = encoder
        self.queue_points_per_image = queue_points_per_image

    needs_overlapping_views = True

    @classmethod
    def from_pretrain_config(cls, encoder, config, **common):
        return cls(encoder, queue_points_per_image=config.queue_points_per_image, **common)

    def key_reduction_inputs(self, data, view_index):
        return data[f"points{view_index + 1}"]

    def reduce_keys(self, key_outputs, inputs):
        # The key maps are needed only at the matched points: `[B, P, D]` unit keys, so
        # shuffle BN gathers P key pixels per image instead of whole stride-4 maps.
        return _sample_unit(key_outputs, inputs)

    def contrastive_rows(self, data, query_outputs, key_outputs):
        # `key_outputs` are already sampled at each view's points (`reduce_keys`).
        points = (data["points1"], data["points2"])
        sampled_queries, sampled_keys = [], []
        for query_view, key_view in self.directions:
            sampled_queries.append(_sample_unit(query_outputs[query_view], points[query_view]))
            sampled_keys.append(key_outputs[key_view])
        dim = tf.shape(sampled_queries[0])[-1]
        queries = tf.reshape(tf.concat(sampled_queries, axis=0), [-1, dim])
        positives = tf.reshape(tf.concat(sampled_keys, axis=0), [-1, dim])
        point_valid = tf.broadcast_to(
            tf.cast(data["valid"], tf.float32)[:, None], tf.shape(sampled_queries[0])[:2]
        )
        weights = tf.reshape(tf.concat([point_valid] * len(self.directions), axis=0), [-1])
        # The first direction's keys are view 2's.
        queued = sampled_keys[0][:, : self.queue_points_per_image]
        keys_to_enqueue = tf.reshape(queued, [-1, dim])
        # Invalid pairs' keys sit at placeholder points: keep them out of the queue.
        enqueue_mask = tf.reshape(
            tf.broadcast_to(tf.cast(data["valid"], tf.bool)[:, None], tf.shape(queued)[:2]), [-1]
        )
        return (
            ContrastiveTerm(
                self.terms[0].name, queries, positives, weights, keys_to_enqueue, enqueue_mask
            ),
        )
