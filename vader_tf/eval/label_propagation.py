"""Propagating a first-frame segmentation through a video by matching dense features.

For each frame t >= 1, every feature cell (the query) is compared, by dot product of
L2-normalised features, with the cells of a set of reference frames: the first frame
(whose labels are given) and the `context_frames` previous frames (whose labels were
predicted). Optionally only reference cells within `radius` cells of the query's
position are candidates. The query's label distribution is the softmax-weighted
(`temperature`) average of the labels of its `topk` most similar candidates. Labels are
soft (per-cell distributions over the labels), both given and predicted.
"""

import collections

import numpy as np
import tensorflow as tf


def _cell_positions(height, width):
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=-1).astype(np.float32)


def propagate_frame(
    query_features,
    reference_features,
    reference_labels,
    topk=10,
    temperature=0.07,
    radius=None,
    chunk_size=1024,
):
    """Labels of one frame from the labelled cells of its reference frames.

    Args:
        query_features: `[h, w, D]` features of the frame to label.
        reference_features: `[R, h, w, D]` features of the reference frames.
        reference_labels: `[R, h, w, C]` label distributions of the reference frames.
        topk: number of most similar reference cells averaged per query cell.
        temperature: softmax temperature applied to the top-k similarities.
        radius: if set, only reference cells within this distance (in cells, Euclidean)
            of the query cell's position are candidates.
        chunk_size: query cells handled at once (bounds the affinity matrix memory).

    Returns:
        `[h, w, C]` float32 label distributions.
    """
    height, width, depth = query_features.shape
    num_references = reference_features.shape[0]
    queries = tf.reshape(tf.convert_to_tensor(query_features, tf.float32), [-1, depth])
    keys = tf.reshape(tf.convert_to_tensor(reference_features, tf.float32), [-1, depth])
    values = tf.reshape(tf.convert_to_tensor(reference_labels, tf.float32), [keys.shape[0], -1])
    positions = _cell_positions(height, width)
    key_positions = np.tile(positions, (num_references, 1))
    k = min(topk, int(keys.shape[0]))
    outputs = []
    for start in range(0, height * width, chunk_size):
        affinity = tf.matmul(queries[start : start + chunk_size], keys, transpose_b=True)
        if radius is not None:
            offsets = positions[start : start + chunk_size, None, :] - key_positions[None]
            too_far = np.sum(offsets**2, axis=-1) > radius**2
            affinity = tf.where(too_far, tf.constant(-np.inf, tf.float32), affinity)
        top_affinity, top_indices = tf.math.top_k(affinity, k=k)
        weights = tf.nn.softmax(top_affinity / temperature, axis=-1)
        outputs.append(tf.einsum("qk,qkc->qc", weights, tf.gather(values, top_indices)))
    return tf.reshape(tf.concat(outputs, axis=0), [height, width, -1]).numpy()


def propagate_labels(
    frame_features,
    first_labels,
    context_frames=3,
    topk=10,
    temperature=0.07,
    radius=None,
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
