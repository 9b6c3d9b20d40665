"""Propagating a first-frame segmentation through a video by matching dense features.

For each frame t >= 1, every feature cell (the query) is compared, by dot product of
L2-normalised features, with the cells of a set of reference frames: the first frame
(whose labels are given) and the `context_frames` previous frames (whose labels were
predicted). Optionally only reference cells within `radius` cells of the query's
position are candidates. The query's label distribution is the softmax-weighted
(`temperature`) average of the labels of its `topk` most similar candidates. Labels are
soft (per-cell distributions over the labels), both given and predicted. The DAVIS
protocol's values of these settings are `vader_tf.eval.protocols.DavisProtocol`.
"""

import collections
import functools

import numpy as np
import tensorflow as tf


@functools.lru_cache(maxsize=8)
def _too_far(height, width, radius):
    """`[h*w, h*w]` bool tensor: True where two cells of an h x w grid are more than
    `radius` cells apart (Euclidean). Computed once per frame size and reused."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=-1).astype(np.float32)
    squared = np.sum((positions[:, None, :] - positions[None, :, :]) ** 2, axis=-1)
    return tf.constant(squared > radius**2)


@tf.function(reduce_retracing=True)
def _propagate_chunk(queries, keys, values, too_far, k, temperature):
    """Label distributions `[q, C]` of a chunk of query cells (see `propagate_frame`)."""
    affinity = tf.matmul(queries, keys, transpose_b=True)
    if too_far is not None:
        # [q, R * h*w] -> [q, R, h*w]: the same position mask for every reference frame.
        shape = tf.shape(affinity)
        affinity = tf.reshape(affinity, [shape[0], -1, tf.shape(too_far)[1]])
        affinity = tf.where(too_far[:, None, :], tf.constant(-np.inf, tf.float32), affinity)
        affinity = tf.reshape(affinity, shape)
    top_affinity, top_indices = tf.math.top_k(affinity, k=k)
    weights = tf.nn.softmax(top_affinity / temperature, axis=-1)
    return tf.einsum("qk,qkc->qc", weights, tf.gather(values, top_indices))


def propagate_frame(
    query_features,
    reference_features,
    reference_labels,
    topk,
    temperature,
    radius,
    chunk_size=1024,
):
    """Labels of one frame from the labelled cells of its reference frames.

    Args:
        query_features: `[h, w, D]` features of the frame to label.
        reference_features: `[R, h, w, D]` features of the reference frames.
        reference_labels: `[R, h, w, C]` label distributions of the reference frames.
        topk: number of most similar reference cells averaged per query cell.
        temperature: softmax temperature applied to the top-k similarities.
        radius: if not None, only reference cells within this distance (in cells, Euclidean)
            of the query cell's position are candidates.
        chunk_size: query cells handled at once (bounds the affinity matrix memory).

    Returns:
        `[h, w, C]` float32 label distributions.
    """
    height, width, depth = query_features.shape
    queries = tf.reshape(tf.convert_to_tensor(query_features, tf.float32), [-1, depth])
    keys = tf.reshape(tf.convert_to_tensor(reference_features, tf.float32), [-1, depth])
    values = tf.reshape(tf.convert_to_tensor(reference_labels, tf.float32), [keys.shape[0], -1])
    too_far = None if radius is None else _too_far(height, width, float(radius))
    k = min(topk, int(keys.shape[0]))
    temperature = tf.constant(temperature, tf.float32)
    outputs = []
    for start in range(0, height * width, chunk_size):
        stop = start + chunk_size
        outputs.append(
            _propagate_chunk(
                queries[start:stop], keys, values,
                None if too_far is None else too_far[start:stop], k, temperature,
            )
        )
    return tf.reshape(tf.concat(outputs, axis=0), [height, width, -1]).numpy()


def propagate_labels(
    frame_features,
    first_labels,
    context_frames,
    topk,
    temperature,
    radius,
    chunk_size=1024,
):
    """Propagates first-frame labels through a video.

    Args:
        frame_features: iterable of `[h, w, D]` L2-normalised features, one per frame,
            starting with the first (labelled) frame; it is consumed lazily, so it can be
            a generator computing features on the fly.
        first_labels: `[h, w, C]` label distributions of the first frame (e.g. the
            area-averaged one-hot of its mask).
        context_frames: number of previous frames (besides the first) used as references.
        topk, temperature, radius, chunk_size: see `propagate_frame`.

    Yields:
        `[h, w, C]` label distributions of frames 1, 2, ... in order.
    """
    frame_features = iter(frame_features)
    first_features = np.asarray(next(frame_features), np.float32)
    first_labels = np.asarray(first_labels, np.float32)
    context = collections.deque(maxlen=context_frames)
    for features in frame_features:
        features = np.asarray(features, np.float32)
        references = [(first_features, first_labels), *context]
        labels = propagate_frame(
            features,
            np.stack([reference[0] for reference in references]),
            np.stack([reference[1] for reference in references]),
            topk=topk,
            temperature=temperature,
            radius=radius,
            chunk_size=chunk_size,
        )
        if context_frames:
            context.append((features, labels))
        yield labels
