"""Propagating a first-frame segmentation through a video by matching dense features.

For each frame t >= 1, every feature cell (the query) is compared, by dot product of
L2-normalised features, with the cells of a set of reference frames: the first frame
(whose labels are given) and the `context_frames` previous frames (whose labels were
predicted). Optionally only reference cells within `radius` cells of the query's
position are candidates (then each block of query cells is compared only with the
reference cells within its reach). The query's label distribution is the softmax-weighted
(`temperature`) average of the labels of its `topk` most similar candidates. Labels are
soft (per-cell distributions over the labels), both given and predicted. The DAVIS
protocol's values of these settings are `vader_tf.eval.protocols.DavisProtocol`.
"""

import collections
import functools

import numpy as np
import tensorflow as tf


@tf.function(reduce_retracing=True)
def _propagate_chunk(queries, keys, values, k, temperature):
    """Label distributions `[q, C]` of a chunk of query cells against every reference
    cell (no radius; see `propagate_frame`)."""
    affinity = tf.matmul(queries, keys, transpose_b=True)
    top_affinity, top_indices = tf.math.top_k(affinity, k=k)
    weights = tf.nn.softmax(top_affinity / temperature, axis=-1)
    return tf.einsum("qk,qkc->qc", weights, tf.gather(values, top_indices))


@functools.lru_cache(maxsize=8)
def _window_mask(tile, reach, radius):
    """`[tile*tile, window*window]` bool, window = tile + 2*reach: True where a cell of a
    tile and a cell of the tile's key window are at most `radius` cells apart."""
    window = tile + 2 * reach
    rows, cols = np.meshgrid(np.arange(tile), np.arange(tile), indexing="ij")
    key_rows, key_cols = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    dy = key_rows.ravel()[None, :] - reach - rows.ravel()[:, None]
    dx = key_cols.ravel()[None, :] - reach - cols.ravel()[:, None]
    return tf.constant(dy**2 + dx**2 <= radius**2)


@tf.function(reduce_retracing=True)
def _propagate_tile_row(queries, keys, values, valid, window_mask, tile, window, k, temperature):
    """Label distributions of one row of query tiles against their key windows.

    Args:
        queries: `[n, tile*tile, D]` query cells of the row's `n` tiles.
        keys: `[R, window, width + 2*reach, D]` the reference rows the tiles can reach
            (padded), values: the same for the labels `[..., C]`, valid: `[window,
            width + 2*reach, 1]` 1 on real cells, 0 on padding.
        window_mask: `_window_mask(tile, reach, radius)`; window = tile + 2*reach.

    Candidates of a query keep the order of the full search (reference frame, then row,
    then column), so ties in `top_k` resolve the same way.
    """
    sizes, strides = [1, window, window, 1], [1, tile, tile, 1]

    def windows(maps):  # [B, window, W, c] -> [n, B, window*window, c]
        channels = tf.shape(maps)[-1]
        patches = tf.image.extract_patches(maps, sizes, strides, [1, 1, 1, 1], "VALID")
        patches = tf.reshape(patches, [tf.shape(maps)[0], -1, window * window, channels])
        return tf.transpose(patches, [1, 0, 2, 3])

    num_refs = tf.shape(keys)[0]
    key_windows = windows(keys)
    n = tf.shape(key_windows)[0]
    key_windows = tf.reshape(key_windows, [n, -1, tf.shape(keys)[-1]])
    value_windows = tf.reshape(windows(values), [n, -1, tf.shape(values)[-1]])
    candidate = window_mask[None] & tf.cast(windows(valid[None])[:, 0, :, 0], tf.bool)[:, None]
    candidate = tf.tile(candidate, [1, 1, num_refs])  # [n, tile*tile, R*window*window]
    affinity = tf.matmul(queries, key_windows, transpose_b=True)
    affinity = tf.where(candidate, affinity, tf.constant(-np.inf, tf.float32))
    top_affinity, top_indices = tf.math.top_k(affinity, k=k)
    weights = tf.nn.softmax(top_affinity / temperature, axis=-1)
    labels = tf.gather(value_windows, top_indices, batch_dims=1)
    return tf.einsum("nqk,nqkc->nqc", weights, labels)


def _propagate_local(queries, keys, values, radius, topk, temperature, tile):
    """`propagate_frame` with a radius: each tile of `tile x tile` query cells is compared
    with the reference cells of its window (the tile grown by the radius), not with the
    whole frame, so the cost grows with the frame area, not with its square."""
    height, width, depth = queries.shape
    num_refs, channels = keys.shape[0], values.shape[-1]
    reach = int(np.floor(radius))
    rows, cols = -(-height // tile), -(-width // tile)
    pad_h, pad_w = rows * tile - height, cols * tile - width
    queries = tf.pad(queries, [[0, pad_h], [0, pad_w], [0, 0]])
    queries = tf.reshape(queries, [rows, tile, cols, tile, depth])
    queries = tf.reshape(tf.transpose(queries, [0, 2, 1, 3, 4]), [rows, cols, tile * tile, depth])
    padding = [[0, 0], [reach, reach + pad_h], [reach, reach + pad_w], [0, 0]]
    keys = tf.pad(keys, padding)
    values = tf.pad(values, padding)
    valid = tf.pad(tf.ones([1, height, width, 1]), padding)[0]
    window = tile + 2 * reach
    window_mask = _window_mask(tile, reach, float(radius))
    k = min(topk, num_refs * window**2)
    outputs = []
    for row in range(rows):
        band = slice(row * tile, row * tile + window)
        outputs.append(
            _propagate_tile_row(
                queries[row], keys[:, band], values[:, band], valid[band], window_mask,
                tile, window, k, temperature,
            )
        )
    labels = tf.reshape(tf.stack(outputs), [rows, cols, tile, tile, channels])
    labels = tf.reshape(tf.transpose(labels, [0, 2, 1, 3, 4]), [rows * tile, cols * tile, channels])
    return labels[:height, :width]


def propagate_frame(
    query_features,
    reference_features,
    reference_labels,
    topk,
    temperature,
    radius,
    chunk_size=1024,
    tile=16,
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
        chunk_size: query cells handled at once without a radius (bounds the affinity
            matrix memory).
        tile: with a radius, query cells are handled in `tile x tile` blocks, each against
            the reference cells within reach of the block (same result, less work).

    Returns:
        `[h, w, C]` float32 label distributions.
    """
    height, width, depth = query_features.shape
    queries = tf.convert_to_tensor(query_features, tf.float32)
    keys = tf.convert_to_tensor(reference_features, tf.float32)
    values = tf.convert_to_tensor(reference_labels, tf.float32)
    temperature = tf.constant(temperature, tf.float32)
    if radius is not None:
        return _propagate_local(queries, keys, values, radius, topk, temperature, tile).numpy()
    queries = tf.reshape(queries, [-1, depth])
    keys = tf.reshape(keys, [-1, depth])
    values = tf.reshape(values, [keys.shape[0], -1])
    k = min(topk, int(keys.shape[0]))
    outputs = [
        _propagate_chunk(queries[start : start + chunk_size], keys, values, k, temperature)
        for start in range(0, height * width, chunk_size)
    ]
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
