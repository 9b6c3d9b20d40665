"""Evaluation metrics, in numpy: segmentation mIoU, DAVIS J and F, PCK, depth errors.

Conventions:

- `mean_iou`: IoU per class from a confusion matrix accumulated over the whole split
  (not averaged per image). Pixels whose ground truth is the ignore label are dropped.
  A class that appears in neither the predictions nor the ground truth has an undefined
  IoU (0/0): it is reported as NaN and excluded from the mean. A class predicted but
  absent from the ground truth has IoU 0 and counts.
- `region_similarity` (DAVIS J): mask IoU; two empty masks agree perfectly (J = 1).
- `boundary_f_measure` (DAVIS F): boundaries are the mask pixels with a 4-neighbour
  outside the mask; a boundary pixel is matched when the other boundary lies within
  `ceil(bound_th * diagonal)` pixels (a disk dilation), `bound_th = 0.008` as in the
  DAVIS protocol. Two empty boundaries give F = 1; exactly one empty gives F = 0.
- `pck`: fraction of points whose predicted position lies within k pixels (Euclidean).
"""

import math

import numpy as np
from scipy import ndimage

DAVIS_BOUNDARY_THRESHOLD = 0.008


def confusion_matrix(predictions, labels, num_classes, ignore_label=None):
    """`[num_classes, num_classes]` counts, rows = ground truth, columns = prediction.

    Args:
        predictions: integer array of predicted classes in [0, num_classes).
        labels: integer array of the same shape; values equal to `ignore_label` are
            skipped, other values must be in [0, num_classes).
        num_classes: number of classes.
        ignore_label: optional label value to skip.
    """
    predictions = np.asarray(predictions).ravel().astype(np.int64)
    labels = np.asarray(labels).ravel().astype(np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"Shapes differ: {predictions.shape} vs {labels.shape}.")
    if ignore_label is not None:
        keep = labels != ignore_label
        predictions, labels = predictions[keep], labels[keep]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Ground-truth labels outside [0, {num_classes}) besides the ignore label."
        )
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def per_class_iou(confusion):
    """IoU of each class from a confusion matrix; NaN for classes absent from both the
    predictions and the ground truth."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positives / union, np.nan)


def mean_iou(confusion):
    """Mean of `per_class_iou` over the classes where it is defined (NaN if none is)."""
    ious = per_class_iou(confusion)
    return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else float("nan")


def pixel_accuracy(confusion):
    """Fraction of non-ignored pixels classified correctly."""
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def region_similarity(prediction, ground_truth):
    """DAVIS J: IoU of two boolean masks; 1.0 when both are empty."""
    prediction = np.asarray(prediction, bool)
    ground_truth = np.asarray(ground_truth, bool)
    union = np.logical_or(prediction, ground_truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, ground_truth).sum() / union)


def mask_boundary(mask):
    """Pixels of a boolean mask that have a 4-neighbour outside it (image border counts
    as outside)."""
    mask = np.asarray(mask, bool)
    interior = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1))
    return mask & ~interior


def _disk(radius):
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def boundary_f_measure(prediction, ground_truth, bound_th=DAVIS_BOUNDARY_THRESHOLD):
    """DAVIS F: F-measure of boundary precision and recall with a distance tolerance.

    Args:
        prediction, ground_truth: boolean `[H, W]` masks.
        bound_th: tolerance; if < 1 a fraction of the image diagonal, else pixels.

    Returns:
        F in [0, 1]; 1.0 when both boundaries are empty, 0.0 when only one is.
    """
    prediction = np.asarray(prediction, bool)
    ground_truth = np.asarray(ground_truth, bool)
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"Shapes differ: {prediction.shape} vs {ground_truth.shape}.")
    if bound_th < 1:
        tolerance = math.ceil(bound_th * math.hypot(*prediction.shape))
    else:
        tolerance = int(bound_th)
    predicted_boundary = mask_boundary(prediction)
    true_boundary = mask_boundary(ground_truth)
    num_predicted, num_true = predicted_boundary.sum(), true_boundary.sum()
    if num_predicted == 0 and num_true == 0:
        return 1.0
    if num_predicted == 0 or num_true == 0:
        return 0.0
    disk = _disk(tolerance)
    near_true = ndimage.binary_dilation(true_boundary, structure=disk)
    near_predicted = ndimage.binary_dilation(predicted_boundary, structure=disk)
    precision = (predicted_boundary & near_true).sum() / num_predicted
    recall = (true_boundary & near_predicted).sum() / num_true
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def pck(predicted_points, true_points, thresholds):
    """Percentage of correct keypoints: `{k: fraction of points within k pixels}`.

    Args:
        predicted_points, true_points: `[P, 2]` arrays of (y, x) positions in pixels.
        thresholds: iterable of distances k in pixels.
    """
    predicted_points = np.asarray(predicted_points, np.float64).reshape(-1, 2)
    true_points = np.asarray(true_points, np.float64).reshape(-1, 2)
    errors = np.linalg.norm(predicted_points - true_points, axis=-1)
    if errors.size == 0:
        return {k: float("nan") for k in thresholds}
    return {k: float(np.mean(errors <= k)) for k in thresholds}


def depth_metrics(predicted_depth, true_depth, valid=None):
    """NYU-v2-protocol depth errors over valid pixels.

    Args:
        predicted_depth, true_depth: arrays of depths (same units, e.g. metres).
        valid: optional boolean mask; by default pixels with `true_depth > 0`.

    Returns:
        dict with `rmse`, `abs_rel` (mean |pred - true| / true), `log10` (mean
        |log10 pred - log10 true|) and `delta1`, `delta2`, `delta3`
        (fraction with max(pred/true, true/pred) < 1.25, 1.25^2, 1.25^3).
        Predictions are clipped below at 1e-3 before the ratio and log terms.
    """
    predicted_depth = np.asarray(predicted_depth, np.float64)
    true_depth = np.asarray(true_depth, np.float64)
    if valid is None:
        valid = true_depth > 0
    predicted = np.maximum(predicted_depth[valid], 1e-3)
    true = true_depth[valid]
    if true.size == 0:
        raise ValueError("No valid ground-truth depth pixels.")
    ratio = np.maximum(predicted / true, true / predicted)
    return {
        "rmse": float(np.sqrt(np.mean((predicted - true) ** 2))),
        "abs_rel": float(np.mean(np.abs(predicted - true) / true)),
        "log10": float(np.mean(np.abs(np.log10(predicted) - np.log10(true)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }
