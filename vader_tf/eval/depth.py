"""Linear depth probe on frozen dense features, scored with the NYU-v2 metrics.

Protocol (mirrors `vader_tf.eval.linear_probe`; settings:
`vader_tf.eval.protocols.DepthProtocol`): each feature cell's target is the mean
log depth of the valid (> 0) pixels it covers; a standardisation + 1x1 linear layer is
fitted to these targets with a squared loss on frozen features of up to
`pixels_per_image` random valid cells per image; predictions are upsampled bilinearly
(in log depth) to the depth map's resolution and exponentiated. Cells and pixels are
related by `vader_tf.ops.grid` (`pool_to_grid`, `upsample_to_pixels`). `rmse`, `abs_rel`,
`log10` and `delta1..3` (see `vader_tf.eval.metrics.depth_metrics`) are computed per
image over its valid pixels and averaged over images.

Data: a folder with `<split>.txt` lists of `image depth` pairs (as in
`vader_tf.data.segmentation`), depths as 16-bit PNGs in millimetres (0 = invalid), or the
TFDS `nyu_depth_v2` dataset if it is already prepared locally (never downloaded here).
"""


import keras
import numpy as np

from vader_tf.data.segmentation import resize_pair
from vader_tf.eval import metrics
from vader_tf.eval.linear_probe import apply_per_cell, fit_linear_head, sample_training_cells
from vader_tf.eval.protocols import DepthProtocol
from vader_tf.ops.grid import FEATURE_STRIDE, pool_to_grid, upsample_to_pixels

MILLIMETRES_PER_METRE = 1000.0


def cell_log_depth(depth, stride=FEATURE_STRIDE):
    """(mean log depth, has-valid-pixel) of each cell of the stride-`stride` grid of an
    `[H, W]` depth map, over the valid pixels (depth > 0) of the cell's footprint
    (`vader_tf.ops.grid.pool_to_grid`, area-weighted)."""
    depth = np.asarray(depth, np.float64)
    valid = depth > 0
    log_depth = np.where(valid, np.log(np.where(valid, depth, 1.0)), 0.0)
    sums = pool_to_grid(log_depth, stride)
    weights = pool_to_grid(valid, stride)
    has_valid = weights > 0
    return (sums / np.where(has_valid, weights, 1.0)).astype(np.float32), has_valid


def load_nyu_depth_v2(split, short_side, limit=None, data_dir=None):
    """Images and depths (metres) of TFDS `nyu_depth_v2`, which must be prepared already.

    Raises:
        FileNotFoundError: if the dataset is not prepared in `data_dir` (nothing is
            downloaded).
    """
    import tensorflow_datasets as tfds  # Only needed for this source.

    builder = tfds.builder("nyu_depth_v2", data_dir=data_dir, try_gcs=False)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS nyu_depth_v2 is not prepared in {builder.data_dir!r}. Prepare it yourself "
            "(e.g. `tfds build nyu_depth_v2 --data_dir=...`) and pass --tfds_data_dir; this "
            "evaluation never downloads data."
        )
    images, depths = [], []
    for example in tfds.as_numpy(builder.as_dataset(split=split).take(limit or -1)):
        depth = example["depth"].astype(np.float32)
        image, depth = resize_pair(example["image"], depth, short_side)
        images.append(image)
        depths.append(depth)
    return np.stack(images), np.stack(depths)


def depths_in_metres(depth_maps):
    """Millimetre depth PNG arrays (from `load_segmentation_split`) -> float32 metres."""
    return np.asarray(depth_maps, np.float32) / MILLIMETRES_PER_METRE


def run_depth_probe(
    extractor,
    train_images,
    train_depths,
    val_images,
    val_depths,
    protocol=DepthProtocol(),
    seed=0,
):
    """Fits the linear depth probe on the training images and scores it on validation.

    Args:
        extractor: a `FeatureExtractor` (frozen).
        train_images, val_images: `[N, H, W, 3]` images in [0, 255], H, W multiples of 4.
        train_depths, val_depths: `[N, H, W]` depths (metres; <= 0 invalid).
        protocol: a `DepthProtocol` (see `vader_tf.eval.linear_probe.run_linear_probe`).
        seed: seed of the cell sampling and the probe initialisation.

    Returns:
        dict of the per-image-averaged depth metrics plus `num_images` and
        `num_train_cells`.
    """
    features, targets = sample_training_cells(
        extractor, train_images, train_depths, cell_log_depth, protocol.pixels_per_image,
        seed=seed,
    )
    head = fit_linear_head(
        features, targets[:, None], 1, keras.losses.MeanSquaredError(), protocol, seed
    )
    per_image = []
    for image, depth in zip(val_images, val_depths):
        log_depth = apply_per_cell(head, extractor(np.asarray(image, np.float32)[None]))
        log_depth = upsample_to_pixels(log_depth, depth.shape)
        per_image.append(metrics.depth_metrics(np.exp(log_depth.numpy()[0, ..., 0]), depth))
    results = {name: float(np.mean([m[name] for m in per_image])) for name in per_image[0]}
    results["num_images"] = len(per_image)
    results["num_train_cells"] = int(len(targets))
    return results
