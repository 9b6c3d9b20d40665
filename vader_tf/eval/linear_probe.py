"""Linear probe for semantic segmentation on frozen dense features.

Protocol (settings: `vader_tf.eval.protocols.CamVidProbeProtocol`):

1. Training targets live at feature resolution (stride 4): each feature cell gets the
   majority class of the non-ignored label pixels in its footprint (`majority_downsample`,
   area-weighted as in `vader_tf.ops.grid.pool_to_grid`); cells with no such pixel are
   ignored. Downsampling the labels, rather than
   upsampling the features, keeps the frozen training set small enough to hold in
   memory and train on CPU.
2. Features are computed once, with the encoder frozen; up to `pixels_per_image`
   random labelled cells per training image are kept.
3. The probe is a per-cell (1x1) linear classifier, preceded by a fixed standardisation
   with the training features' mean and variance (a BatchNorm-without-affine folded in),
   trained with Adam on softmax cross-entropy.
4. Scoring: the probe's stride-4 logits are upsampled bilinearly to label resolution
   (`vader_tf.ops.grid.upsample_to_pixels`) and
   the arg-max is scored by `vader_tf.eval.segmentation.score_segmentation` (mIoU with
   the ignore label).
"""

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf.eval.protocols import CamVidProbeProtocol
from vader_tf.eval.segmentation import score_segmentation
from vader_tf.ops.grid import FEATURE_STRIDE, pool_to_grid


def majority_downsample(label, num_classes, ignore_label, stride=FEATURE_STRIDE):
    """Area-weighted majority vote over each cell's footprint in an `[H, W]` label map.

    The footprint of a cell and the weights of its pixels are those of
    `vader_tf.ops.grid.pool_to_grid` (the `stride`-wide square centred on the cell).

    Returns:
        `[ceil(H / stride), ceil(W / stride)]` int32 map; cells whose footprint holds only
        `ignore_label` pixels (or lies outside the image) get `ignore_label`. Ties go to
        the smaller class id.
    """
    label = np.asarray(label, np.int64)
    valid = label != ignore_label
    one_hot = np.zeros(label.shape + (num_classes,), np.float32)
    rows, cols = np.nonzero(valid)
    one_hot[rows, cols, label[valid]] = 1.0
    counts = pool_to_grid(one_hot, stride)
    return np.where(counts.sum(-1) > 0, counts.argmax(-1), ignore_label).astype(np.int32)


def sample_training_cells(
    extractor, images, targets, cell_targets, pixels_per_image, batch_size=8, seed=0
):
    """Frozen features and targets of random valid cells of each image.

    Args:
        extractor: a `FeatureExtractor`.
        images: `[N, H, W, 3]` array or list of images in [0, 255].
        targets: per-image dense targets (e.g. label or depth maps).
        cell_targets: function of one dense target returning `(values, valid)`, both
            `[ceil(H / 4), ceil(W / 4)]`: the target of each feature cell and whether the
            cell may be used.
        pixels_per_image: valid cells sampled per image (0 = all).
        batch_size: images per feature extraction call.
        seed: seed of the sampling.

    Returns:
        (features float32 `[M, D]`, cell targets `[M]`).
    """
    rng = np.random.default_rng(seed)
    sampled_features, sampled_targets = [], []
    for start in range(0, len(images), batch_size):
        batch_features = extractor(np.asarray(images[start : start + batch_size], np.float32))
        for features, target in zip(batch_features.numpy(), targets[start : start + batch_size]):
            values, valid = cell_targets(target)
            candidates = np.flatnonzero(valid.ravel())
            if pixels_per_image and len(candidates) > pixels_per_image:
                candidates = rng.choice(candidates, pixels_per_image, replace=False)
            sampled_features.append(features.reshape(-1, features.shape[-1])[candidates])
            sampled_targets.append(values.ravel()[candidates])
    return np.concatenate(sampled_features), np.concatenate(sampled_targets)


def fit_linear_head(features, targets, units, loss, protocol, seed=0):
    """Fits standardisation + a linear layer on `[M, D]` features and `[M]` targets, for
    `protocol.steps` Adam steps (`learning_rate`) of `batch_size` cells (a
    `LinearHeadProtocol`).

    Returns:
        A `keras.Model` mapping `[M, D]` features to `[M, units]` outputs; use
        `apply_per_cell` on `[B, h, w, D]` maps.
    """
    keras.utils.set_random_seed(seed)
    mean = features.mean(axis=0)
    variance = features.var(axis=0) + 1e-6
    standardize = keras.layers.Normalization(mean=mean, variance=variance, name="standardize")
    # Built eagerly: its constants must not be created inside a traced training step.
    standardize.build((None, features.shape[-1]))
    head = keras.Sequential(
        [standardize, keras.layers.Dense(units, name="linear")], name="linear_probe"
    )
    head.compile(optimizer=keras.optimizers.Adam(protocol.learning_rate), loss=loss)
    dataset = (
        tf.data.Dataset.from_tensor_slices((features, targets))
        .shuffle(min(len(targets), 200_000), seed=seed)
        .repeat()
        .batch(protocol.batch_size)
    )
    history = head.fit(
        dataset, steps_per_epoch=protocol.steps, epochs=1, shuffle=False, verbose=0
    )
    logging.info("Linear probe: final training loss %.4f", history.history["loss"][-1])
    return head


def apply_per_cell(classifier, feature_maps):
    """Applies a `[M, D] -> [M, C]` model to every cell of `[B, h, w, D]` maps."""
    shape = tf.shape(feature_maps)
    outputs = classifier(tf.reshape(feature_maps, [-1, feature_maps.shape[-1]]), training=False)
    return tf.reshape(outputs, tf.concat([shape[:-1], [-1]], axis=0))


def run_linear_probe(
    extractor,
    train_images,
    train_labels,
    val_images,
    val_labels,
    protocol=CamVidProbeProtocol(),
    seed=0,
):
    """Trains a linear probe on the training split and scores it on the validation split.

    Args:
        extractor: a `vader_tf.eval.encoders.FeatureExtractor` (frozen).
        train_images, val_images: uint8/float `[N, H, W, 3]` arrays (or lists) in [0, 255].
        train_labels, val_labels: `[N, H, W]` class-id arrays (or lists).
        protocol: a `CamVidProbeProtocol`: classes (ids 0..num_classes-1), the label
            excluded from training and scoring, labelled cells sampled per training
            image, optimisation steps, cells per step and Adam learning rate (its
            `image_size` is applied by whoever loads the images).
        seed: seed of the cell sampling and the classifier initialisation.

    Returns:
        dict of `score_segmentation` metrics plus `num_train_cells`.
    """
    num_classes, ignore_label = protocol.num_classes, protocol.ignore_label

    def cell_labels(label):
        labels = majority_downsample(label, num_classes, ignore_label)
        return labels, labels != ignore_label

    features, labels = sample_training_cells(
        extractor, train_images, train_labels, cell_labels, protocol.pixels_per_image, seed=seed
    )
    logging.info("Linear probe: %d training cells of dimension %d", *features.shape)
    classifier = fit_linear_head(
        features,
        labels,
        num_classes,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        protocol,
        seed,
    )
    scores = score_segmentation(
        lambda images: apply_per_cell(classifier, extractor(images)),
        val_images,
        val_labels,
        num_classes,
        ignore_label,
    )
    scores["num_train_cells"] = int(len(labels))
    return scores
