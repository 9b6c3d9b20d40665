"""VADeR: pixel-level momentum contrast (Pinheiro et al., NeurIPS 2020).

A contrastive row is a matched pixel: the query is the query network's feature at a scene
point in one view, its positive the key network's feature at the same scene point in the
other view, and the negatives the queue of key pixels from earlier batches (other images).
Both directions (view1 -> view2 and view2 -> view1) are used, or only view1 -> view2
with `symmetric_loss=False`.

Two optional terms beside the stride-4 pixel term (issue 20's method variants; both off
by default, and then the model, its checkpoint and its step are the plain method's):

- global (`global_loss_weight` = lambda > 0): an image-level MoCo v2 term on the same
  backbone (pooled C5, its own two-layer MLP head and its own queue of images), as
  DenseCL and PixPro add one; the loss is `(1 - lambda) * dense + lambda * global`.
  With `global_level="decoder"` it pools the decoder output instead, so the image-level
  signal reaches the served representation, not only the backbone.
- coarse (`coarse_level`, e.g. "P4"): the pixel InfoNCE also on a coarser backbone level,
  through its own 1x1-convolution MLP head and queue; the matched points are mapped onto
  that level's grid by the convention of `vader_tf.ops.grid` (grid coordinate `g` at
  stride 4 is `g / 4` at stride 16). The dense loss is then
  `(1 - w) * stride-4 + w * coarse` with `w = coarse_loss_weight`.

And one change to the stride-4 term itself, PixPro's pixel-propagation module (Xie et
al., CVPR 2021; `propagation_power` = gamma, off by default): a query pixel at a matched
point becomes `y = sum_j max(cos(x, x_j), 0) ** gamma * g(x_j)` over all cells `j` of its
view's embedding map, `g` a learned linear 1x1 convolution, and `y` (re-normalised) is
contrasted against the key pixel and the queue as before. A query is pulled towards its
positive through the pixels that resemble it, which favours features that are smooth
within a region (semantics) over features that single out a point. Keys are unchanged.

The extra heads are not part of the exported encoder. They train the backbone only
(the decoder and head, what is served, are trained by the stride-4 term alone), except
an image-level term on the decoder (`global_level="decoder"`), and the propagation
transform `g`, which sits on the embedding map and trains the decoder and head with it.
"""

import math

import keras
import tensorflow as tf

from vader_tf.models.backbone import PYRAMID_STRIDES
from vader_tf.models.encoder import DenseEncoder
from vader_tf.ops import grid as grid_lib
from vader_tf.ops.sampling import sample_points
from vader_tf.training.methods import register_method
from vader_tf.training.moco import image_embedding_model, image_term, select_outputs
from vader_tf.training.momentum_contrast import ContrastiveTerm, MomentumContrast, TermSpec

# Backbone levels the coarse term may use (P2 is the stride-4 term's own resolution).
COARSE_LEVELS = ("P3", "P4", "P5")
# Maps the image-level term may pool: C5 (MoCo's) or the decoder output (the served one).
GLOBAL_LEVELS = ("P5", "decoder")


def _sample_unit(feature_map, points):
    """Bilinear samples at grid points, re-normalised to unit length, as `[B, P, D]`."""
    sampled = sample_points(tf.cast(feature_map, tf.float32), points)
    return tf.math.l2_normalize(sampled, axis=-1)


def propagate(query_points, query_map, transformed_map, power):
    """PixPro's pixel propagation at sampled points.

    Args:
        query_points: `[B, P, D]` unit query features at the matched points.
        query_map: `[B, h, w, D]` the view's embedding map (re-normalised here).
        transformed_map: `[B, h, w, D]` `g` applied to the embedding map.
        power: gamma (at least 1), the sharpness of the similarity weights.

    Returns:
        `[B, P, D]` unit rows `normalize(sum_j max(cos(q, x_j), 0) ** gamma * g(x_j))`.
    """

    def flat(feature_map):  # [B, h, w, D] -> [B, h * w, D]
        shape = tf.shape(feature_map)
        return tf.reshape(tf.cast(feature_map, tf.float32), [shape[0], -1, shape[-1]])

    cells = tf.math.l2_normalize(flat(query_map), axis=-1)
    weights = tf.nn.relu(tf.einsum("bpd,bnd->bpn", query_points, cells)) ** power
    return tf.math.l2_normalize(
        tf.einsum("bpn,bnd->bpd", weights, flat(transformed_map)), axis=-1
    )


def check_terms(
    global_loss_weight, global_level, coarse_level, coarse_loss_weight, propagation_power=None
):
    """Raises `ValueError` naming the first bad setting of the optional terms (the
    `PretrainConfig` fields of the same names)."""
    if not (math.isfinite(global_loss_weight) and 0.0 <= global_loss_weight < 1.0):
        raise ValueError(f"global_loss_weight must be in [0, 1), got {global_loss_weight!r}.")
    if global_level not in GLOBAL_LEVELS:
        raise ValueError(
            f"global_level must be one of {', '.join(GLOBAL_LEVELS)}, got {global_level!r}."
        )
    if coarse_level is not None and coarse_level not in COARSE_LEVELS:
        raise ValueError(
            f"coarse_level must be one of {', '.join(COARSE_LEVELS)}, got {coarse_level!r}."
        )
    if not (math.isfinite(coarse_loss_weight) and 0.0 <= coarse_loss_weight <= 1.0):
        raise ValueError(f"coarse_loss_weight must be in [0.0, 1.0], got {coarse_loss_weight!r}.")
    # Below 1, the weights' gradient at a cosine of 0 is infinite.
    if propagation_power is not None and not (
        math.isfinite(propagation_power) and propagation_power >= 1
    ):
        raise ValueError(
            f"propagation_power must be at least 1 (or unset), got {propagation_power!r}."
        )


def coarse_points(points, stride):
    """Grid coordinates of the stride-4 map -> the same input positions on a stride-`stride`
    map (`vader_tf.ops.grid`'s convention)."""
    return grid_lib.image_to_grid(grid_lib.grid_to_image(points), stride)


def vader_heads_model(
    encoder,
    global_term=False,
    coarse_level=None,
    global_level="P5",
    propagation=False,
    name="vader_heads",
):
    """Images -> `{"dense": the encoder's embedding map, "global": [B, D] unit image
    embedding of the pooled `global_level` map (if `global_term`), "coarse": [B, h, w, D]
    map on `coarse_level` (if given; not normalised), "propagation": the embedding map
    through the propagation transform `g` (if `propagation`)}`, sharing `encoder`'s
    layers. (The key network has `g` too, unused, so that query and key weights pair up
    for the momentum update.)"""
    outputs = {"dense": encoder.output}
    dim = encoder.embedding_dim
    if global_term:
        outputs["global"] = image_embedding_model(
            encoder, None, dim, name=f"{name}_image", prefix="image_", level=global_level
        ).output
    if coarse_level is not None:
        level = encoder.pyramid_outputs[coarse_level]
        x = keras.layers.Conv2D(
            level.shape[-1], 1, activation="relu", name="coarse_hidden"
        )(level)
        outputs["coarse"] = keras.layers.Conv2D(dim, 1, name="coarse_output")(x)
    if propagation:
        outputs["propagation"] = keras.layers.Conv2D(dim, 1, name="propagation_transform")(
            encoder.output
        )
    return keras.Model(encoder.input, outputs, name=name)


@register_method("vader")
class VADeR(MomentumContrast):
    """Pixel-level momentum contrast over a `DenseEncoder`.

    Args:
        encoder: the query `DenseEncoder`; the key encoder is built from its config.
        queue_points_per_image: how many key pixels of each image enter the queue per
            step (the first ones of its matched points, which are drawn at random); pairs
            that are not `valid` enqueue nothing. The coarse term enqueues as many.
        global_loss_weight: lambda, the image-level term's weight (0 = no such term).
        global_queue_size: images kept in the image-level term's queue.
        global_level: the map the image-level term pools, one of `GLOBAL_LEVELS`: "P5"
            (C5, as MoCo v2 and DenseCL) or "decoder" (the FPN output the export serves,
            so that the term trains the decoder too).
        coarse_level: backbone level of the coarse pixel term (one of `COARSE_LEVELS`),
            or None (no such term).
        coarse_loss_weight: w, the coarse term's share of the dense loss.
        propagation_power: gamma of the pixel-propagation module on the stride-4 term's
            queries (`propagate`), or None (plain queries).
        **kwargs: `MomentumContrast` arguments (queue size, temperature, momentum, ...);
            `queue_size` is the size of each pixel term's queue.

    The batch is the dict made by `vader_tf.data.pipeline.two_view_dataset`: `view1`,
    `view2` `[B, S, S, 3]`, `points1`, `points2` `[B, P, 2]` grid coordinates of the same
    scene points in each view, and `valid` `[B]` (pairs without enough overlap count zero).
    """

    def __init__(
        self,
        encoder,
        queue_points_per_image=16,
        global_loss_weight=0.0,
        global_queue_size=256,
        global_level="P5",
        coarse_level=None,
        coarse_loss_weight=0.5,
        propagation_power=None,
        **kwargs,
    ):
        check_terms(
            global_loss_weight, global_level, coarse_level, coarse_loss_weight, propagation_power
        )
        key_encoder = DenseEncoder.from_config({**encoder.get_config(), "name": "key_encoder"})
        kwargs.setdefault("name", "vader")
        self.has_global = global_loss_weight > 0
        self.coarse_level = coarse_level
        self.propagation_power = propagation_power
        dim = encoder.embedding_dim
        if self._has_heads:
            heads = (self.has_global, coarse_level, global_level, propagation_power is not None)
            query_model = vader_heads_model(encoder, *heads)
            key_model = vader_heads_model(key_encoder, *heads, name="key_vader_heads")
            queue_size = kwargs.pop("queue_size", 65536)
            dense_weight = 1.0 - global_loss_weight
            coarse_weight = coarse_loss_weight if coarse_level is not None else 0.0
            terms = [TermSpec("dense", queue_size, dim, dense_weight * (1.0 - coarse_weight))]
            if coarse_level is not None:
                terms.append(TermSpec(coarse_level, queue_size, dim, dense_weight * coarse_weight))
            if self.has_global:
                terms.append(TermSpec("global", global_queue_size, dim, global_loss_weight))
            super().__init__(query_model, key_model, dim, queue_size, terms=terms, **kwargs)
        else:
            super().__init__(encoder, key_encoder, dim, **kwargs)
        self.encoder = encoder
        self.queue_points_per_image = queue_points_per_image
        self.global_loss_weight = global_loss_weight
        self.coarse_loss_weight = coarse_loss_weight

    needs_overlapping_views = True

    @property
    def _has_heads(self):
        return (
            self.has_global or self.coarse_level is not None or self.propagation_power is not None
        )

    @classmethod
    def from_pretrain_config(cls, encoder, config, **common):
        return cls(
            encoder,
            queue_points_per_image=config.queue_points_per_image,
            global_loss_weight=config.global_loss_weight,
            global_queue_size=config.global_queue_size,
            global_level=config.global_level,
            coarse_level=config.coarse_level,
            coarse_loss_weight=config.coarse_loss_weight,
            propagation_power=config.propagation_power,
            **common,
        )

    def key_reduction_inputs(self, data, view_index):
        return data[f"points{view_index + 1}"]

    def reduce_keys(self, key_outputs, inputs):
        # The key maps are needed only at the matched points: `[B, P, D]` unit keys, so
        # shuffle BN gathers P key pixels per image instead of whole stride-4 maps.
        if not self._has_heads:
            return _sample_unit(key_outputs, inputs)
        reduced = {"dense": _sample_unit(key_outputs["dense"], inputs)}
        if self.coarse_level is not None:
            stride = PYRAMID_STRIDES[self.coarse_level]
            reduced["coarse"] = _sample_unit(key_outputs["coarse"], coarse_points(inputs, stride))
        if self.has_global:
            reduced["global"] = tf.cast(key_outputs["global"], tf.float32)
        return reduced

    def _pixel_term(self, name, data, query_maps, sampled_keys, stride, propagation_maps=None):
        """The pixel InfoNCE rows of one level: query maps per view (stride `stride`),
        key samples per view (`reduce_keys`), at the pairs' matched points; with
        `propagation_maps` (`g` of each view's query map) the queries are propagated."""
        points = (data["points1"], data["points2"])
        queries, positives = [], []
        for query_view, key_view in self.directions:
            view_points = points[query_view]
            if stride != grid_lib.FEATURE_STRIDE:
                view_points = coarse_points(view_points, stride)
            query = _sample_unit(query_maps[query_view], view_points)
            if propagation_maps is not None:
                query = propagate(
                    query,
                    query_maps[query_view],
                    propagation_maps[query_view],
                    self.propagation_power,
                )
            queries.append(query)
            positives.append(sampled_keys[key_view])
        dim = tf.shape(queries[0])[-1]
        point_valid = tf.broadcast_to(
            tf.cast(data["valid"], tf.float32)[:, None], tf.shape(queries[0])[:2]
        )
        weights = tf.reshape(tf.concat([point_valid] * len(self.directions), axis=0), [-1])
        # The first direction's keys are view 2's.
        queued = positives[0][:, : self.queue_points_per_image]
        # Invalid pairs' keys sit at placeholder points: keep them out of the queue.
        enqueue_mask = tf.reshape(
            tf.broadcast_to(tf.cast(data["valid"], tf.bool)[:, None], tf.shape(queued)[:2]), [-1]
        )
        return ContrastiveTerm(
            name,
            tf.reshape(tf.concat(queries, axis=0), [-1, dim]),
            tf.reshape(tf.concat(positives, axis=0), [-1, dim]),
            weights,
            tf.reshape(queued, [-1, dim]),
            enqueue_mask,
        )

    def contrastive_rows(self, data, query_outputs, key_outputs):
        # `key_outputs` are already sampled at each view's points (`reduce_keys`).
        if not self._has_heads:
            return (
                self._pixel_term(
                    self.terms[0].name, data, query_outputs, key_outputs, grid_lib.FEATURE_STRIDE
                ),
            )
        terms = [
            self._pixel_term(
                "dense",
                data,
                select_outputs(query_outputs, "dense"),
                select_outputs(key_outputs, "dense"),
                grid_lib.FEATURE_STRIDE,
                propagation_maps=(
                    None
                    if self.propagation_power is None
                    else select_outputs(query_outputs, "propagation")
                ),
            )
        ]
        if self.coarse_level is not None:
            terms.append(
                self._pixel_term(
                    self.coarse_level,
                    data,
                    select_outputs(query_outputs, "coarse"),
                    select_outputs(key_outputs, "coarse"),
                    PYRAMID_STRIDES[self.coarse_level],
                )
            )
        if self.has_global:
            query_global = [
                None if g is None else tf.cast(g, tf.float32)
                for g in select_outputs(query_outputs, "global")
            ]
            key_global = select_outputs(key_outputs, "global")
            terms.append(image_term("global", self.directions, query_global, key_global))
        return tuple(terms)
