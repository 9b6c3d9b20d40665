"""Geometric correspondence accuracy of dense features under known warps of real photos.

Settings: `vader_tf.eval.protocols.CorrespondenceProtocol`. Each photo (resized to short
side `image_size`, centre-cropped to multiples of 32; `load_images`) is warped by a
random homography with a known matrix: a random crop of relative scale in `scale_range`
(so a zoom), an optional horizontal flip, and, for the "homography" kind,
independent random shifts of the crop's four corners by up to `perspective` of its size.
Features of the source and the warped image are computed; each source feature cell (every
`point_stride`-th cell in each direction) is matched to its most similar target cell
(dot product of L2-normalised features). Positions are cell centres in input pixels,
`4 * j + 0.5` (`vader_tf.ops.grid`); the error of a match is the distance in pixels of
the (same-size) target image between the matched cell centre and the true image of the
source point. Points whose true image falls outside the target are not scored. PCK@k is
the fraction of scored points with error <= k pixels; note cell centres are 4 pixels
apart, so errors of up to 2*sqrt(2) pixels are quantisation.
"""


import numpy as np
import tensorflow as tf

from vader_tf.data.segmentation import load_image, resize_and_crop_image
from vader_tf.data.sources import IMAGE_EXTENSIONS, list_image_files
from vader_tf.eval import metrics
from vader_tf.eval.protocols import CorrespondenceProtocol
from vader_tf.ops.grid import FEATURE_STRIDE, grid_to_image

WARP_KINDS = ("crop_flip", "homography")


def list_images(folder, limit=None):
    """The first `limit` (default: all) image files below `folder`, as
    `vader_tf.data.sources.list_image_files` lists them (the lister of `--data`)."""
    paths = list_image_files(folder)
    if not paths:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found below {folder!r}."
        )
    return paths[:limit]


def load_images(folder, image_size, limit=None):
    """The photos of `list_images(folder, limit)`, each resized to short side
    `image_size` and centre-cropped to multiples of 32, loaded lazily."""
    paths = list_images(folder, limit)
    return (resize_and_crop_image(load_image(path), image_size) for path in paths)


def homography_from_points(source_points, target_points):
    """The 3x3 matrix H with H @ (x, y, 1) ~ source for each target (x, y) point pair.

    Args:
        source_points, target_points: `[4, 2]` arrays of (x, y) positions.
    """
    rows, rhs = [], []
    for (xs, ys), (xt, yt) in zip(source_points, target_points):
        rows.append([xt, yt, 1, 0, 0, 0, -xs * xt, -xs * yt])
        rows.append([0, 0, 0, xt, yt, 1, -ys * xt, -ys * yt])
        rhs.extend([xs, ys])
    solution = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(solution, 1.0).reshape(3, 3)


def random_homography(height, width, rng, scale_range, perspective=0.0, flip=None):
    """A random crop (+ flip, + corner jitter) as a target -> source homography.

    Coordinates are continuous (x, y) input pixels (pixel k covers [k, k + 1)); the
    target image has the same size as the source.

    Args:
        height, width: image size.
        rng: a `numpy.random.Generator`.
        scale_range: range of the crop's side length relative to the image.
        perspective: maximum shift of each crop corner, relative to the crop size.
        flip: whether to flip horizontally; random (probability 1/2) if None.

    Returns:
        `[3, 3]` float64 matrix mapping target (x, y, 1) to source (x, y, 1), up to scale.
    """
    scale = rng.uniform(*scale_range)
    crop_w, crop_h = scale * width, scale * height
    left = rng.uniform(0, width - crop_w)
    top = rng.uniform(0, height - crop_h)
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    source = corners * [crop_w, crop_h] + [left, top]
    source += rng.uniform(-perspective, perspective, (4, 2)) * [crop_w, crop_h]
    if flip if flip is not None else rng.random() < 0.5:
        source = source[[1, 0, 3, 2]]
    return homography_from_points(source, corners * [width, height])


def warp_image(image, target_to_source):
    """Warps an `[H, W, 3]` image with a continuous-coordinate target -> source
    homography (bilinear; outside the source is black)."""
    # ImageProjectiveTransformV3 works on pixel indices (centre of pixel k at k, not
    # k + 0.5): conjugate by the half-pixel shift.
    to_continuous = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    to_index = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    matrix = to_index @ target_to_source @ to_continuous
    matrix = matrix / matrix[2, 2]
    height, width = image.shape[:2]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.convert_to_tensor(image, tf.float32)[None],
        transforms=tf.constant(matrix.ravel()[:8][None], tf.float32),
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return warped[0].numpy()


def apply_homography(matrix, points_yx):
    """Applies an (x, y) homography to `[P, 2]` (y, x) points; returns (y, x) points."""
    homogeneous = np.concatenate([points_yx[:, ::-1], np.ones((len(points_yx), 1))], axis=1)
    mapped = homogeneous @ matrix.T
    return (mapped[:, :2] / mapped[:, 2:3])[:, ::-1]


def match_points(source_features, target_features, point_stride=1):
    """Nearest-neighbour matches of source cells in the target feature map.

    Args:
        source_features, target_features: `[h, w, D]` L2-normalised feature maps.
        point_stride: use every `point_stride`-th source cell in each direction.

    Returns:
        (source points, matched target points): `[P, 2]` (y, x) cell centres in input
        pixels.
    """
    height, width, depth = source_features.shape
    rows, cols = np.meshgrid(
        np.arange(0, height, point_stride), np.arange(0, width, point_stride), indexing="ij"
    )
    source_cells = np.stack([rows.ravel(), cols.ravel()], axis=-1)
    queries = tf.constant(source_features[source_cells[:, 0], source_cells[:, 1]], tf.float32)
    keys = tf.reshape(tf.constant(target_features, tf.float32), [-1, depth])
    best = tf.argmax(tf.matmul(queries, keys, transpose_b=True), axis=-1).numpy()
    target_width = target_features.shape[1]
    target_cells = np.stack([best // target_width, best % target_width], axis=-1)
    return grid_to_image(source_cells.astype(np.float64)), grid_to_image(
        target_cells.astype(np.float64)
    )


def pair_errors(extractor, image, target_to_source, point_stride=1):
    """Match errors in pixels of the scorable source points for one warped pair."""
    warped = warp_image(image, target_to_source)
    features = extractor(np.stack([image, warped]).astype(np.float32)).numpy()
    source_points, matched_points = match_points(features[0], features[1], point_stride)
    true_points = apply_homography(np.linalg.inv(target_to_source), source_points)
    height, width = image.shape[:2]
    inside = (
        (true_points[:, 0] >= 0)
        & (true_points[:, 0] < height)
        & (true_points[:, 1] >= 0)
        & (true_points[:, 1] < width)
    )
    return matched_points[inside], true_points[inside]


def evaluate_correspondence(extractor, images, protocol=CorrespondenceProtocol(), seed=0):
    """PCK of nearest-neighbour feature matching under random warps.

    Args:
        extractor: a `FeatureExtractor`.
        images: iterable of float `[H, W, 3]` images in [0, 255] (H, W multiples of
            `FEATURE_STRIDE` so the feature grid covers them exactly), e.g. from
            `load_images`.
        protocol: a `CorrespondenceProtocol`: `thresholds` (PCK distances in pixels),
            `warps_per_image` (warps of each kind per image), `scale_range` and
            `perspective` (see `random_homography`; `perspective` is used only for the
            "homography" kind, "crop_flip" has none), `point_stride` (source cells
            sampled every `point_stride` cells). Its `image_size` is applied by whoever
            loads the images.
        seed: seed of the warps.

    Returns:
        dict keyed by warp kind ("crop_flip", "homography", "all") of dicts with
        `pck@<k>`, `mean_error` (pixels) and `num_points`, plus `num_pairs`.
    """
    rng = np.random.default_rng(seed)
    matched = {kind: [] for kind in WARP_KINDS}
    truth = {kind: [] for kind in WARP_KINDS}
    num_pairs = 0
    for image in images:
        height, width = image.shape[:2]
        if height % FEATURE_STRIDE or width % FEATURE_STRIDE:
            raise ValueError(f"Image size {height}x{width} is not a multiple of {FEATURE_STRIDE}.")
        for _ in range(protocol.warps_per_image):
            for kind in WARP_KINDS:
                jitter = protocol.perspective if kind == "homography" else 0.0
                matrix = random_homography(height, width, rng, protocol.scale_range, jitter)
                predicted, true = pair_errors(extractor, image, matrix, protocol.point_stride)
                matched[kind].append(predicted)
                truth[kind].append(true)
                num_pairs += 1
    results = {"num_pairs": num_pairs}
    for kind in (*WARP_KINDS, "all"):
        kinds = WARP_KINDS if kind == "all" else (kind,)
        predicted = np.concatenate([p for k in kinds for p in matched[k]])
        true = np.concatenate([t for k in kinds for t in truth[k]])
        pck = metrics.pck(predicted, true, protocol.thresholds)
        scores = {f"pck@{k:g}": value for k, value in pck.items()}
        errors = np.linalg.norm(predicted - true, axis=-1)
        scores["mean_error"] = float(errors.mean()) if errors.size else float("nan")
        scores["num_points"] = int(errors.size)
        results[kind] = scores
    return results
