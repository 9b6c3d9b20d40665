"""Scoring dense classifiers on a labelled split: predictions at label resolution, mIoU.

Shared by the linear probe and the fine-tuning example: any function mapping a batch of
images to stride-4 class logits is scored by upsampling its logits bilinearly to the
label resolution (`vader_tf.ops.grid.upsample_to_pixels`, which keeps the grid
convention), taking the argmax, and accumulating one
confusion matrix over the split (see `vader_tf.eval.metrics` for the mIoU convention).
"""

import numpy as np
import tensorflow as tf

from vader_tf.eval import metrics
from vader_tf.ops.grid import upsample_to_pixels


def predict_classes(logits_fn, images):
    """Arg-max classes `[B, H, W]` of the stride-4 `logits_fn(images)` upsampled to the
    image size."""
    images = np.asarray(images, np.float32)
    logits = upsample_to_pixels(logits_fn(images), images.shape[1:3])
    return tf.argmax(logits, axis=-1, output_type=tf.int32).numpy()


def score_segmentation(logits_fn, images, labels, num_classes, ignore_label=None, batch_size=8):
    """mIoU, per-class IoU and pixel accuracy of `logits_fn` on a labelled split.

    Args:
        logits_fn: float32 `[B, H, W, 3]` images in [0, 255] -> `[B, h, w, num_classes]`.
        images: `[N, H, W, 3]` array, or a list of `[H, W, 3]` arrays of differing sizes
            (then scored one at a time).
        labels: matching `[N, H, W]` array or list of `[H, W]` arrays.
        num_classes: number of classes.
        ignore_label: label value excluded from scoring.
        batch_size: images per call of `logits_fn`.

    Returns:
        dict with `mean_iou`, `per_class_iou` (list, NaN for classes absent from both
        predictions and labels), `pixel_accuracy` and `num_images`.
    """
    if isinstance(images, list):
        batch_size = 1
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for start in range(0, len(images), batch_size):
        batch_images = np.stack(images[start : start + batch_size])
        batch_labels = np.stack(labels[start : start + batch_size])
        predictions = predict_classes(logits_fn, batch_images)
        confusion += metrics.confusion_matrix(predictions, batch_labels, num_classes, ignore_label)
    return {
        "mean_iou": metrics.mean_iou(confusion),
        "per_class_iou": metrics.per_class_iou(confusion).tolist(),
        "pixel_accuracy": metrics.pixel_accuracy(confusion),
        "num_images": len(images),
    }
