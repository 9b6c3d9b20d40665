"""Metric functions against hand-computed cases."""

import math

import numpy as np
import pytest

from vader_tf.eval import metrics


def test_mean_iou_with_ignore_label_and_absent_class():
    labels = np.array([[0, 0, 1, 1], [255, 255, 1, 1]])
    predictions = np.array([[0, 1, 1, 1], [2, 2, 1, 0]])
    confusion = metrics.confusion_matrix(predictions, labels, num_classes=4, ignore_label=255)
    # Class 0: TP 1, FP 1 (gt 1), FN 1 -> 1/3. Class 1: TP 3, FP 1, FN 1 -> 3/5.
    # Class 2 only predicted on ignored pixels: absent -> NaN. Class 3 absent -> NaN.
    ious = metrics.per_class_iou(confusion)
    np.testing.assert_allclose(ious[:2], [1 / 3, 3 / 5])
    assert np.isnan(ious[2]) and np.isnan(ious[3])
    assert metrics.mean_iou(confusion) == pytest.approx((1 / 3 + 3 / 5) / 2)
    assert metrics.pixel_accuracy(confusion) == pytest.approx(4 / 6)


def test_mean_iou_counts_classes_predicted_but_not_in_ground_truth():
    confusion = metrics.confusion_matrix(np.array([0, 1]), np.array([0, 0]), num_classes=3)
    np.testing.assert_allclose(metrics.per_class_iou(confusion)[:2], [0.5, 0.0])
    assert metrics.mean_iou(confusion) == pytest.approx(0.25)


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(np.array([0]), np.array([5]), num_classes=3, ignore_label=11)


def test_region_similarity():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert metrics.region_similarity(a, b) == 1.0
    a[:2] = True
    assert metrics.region_similarity(a, b) == 0.0
    b[1:3] = True
    assert metrics.region_similarity(a, b) == pytest.approx(4 / 12)


def test_boundary_f_measure_empty_and_identical_masks():
    empty = np.zeros((20, 20), bool)
    square = empty.copy()
    square[5:15, 5:15] = True
    assert metrics.boundary_f_measure(empty, empty) == 1.0
    assert metrics.boundary_f_measure(square, empty) == 0.0
    assert metrics.boundary_f_measure(empty, square) == 0.0
    assert metrics.boundary_f_measure(square, square) == 1.0


def test_boundary_f_measure_tolerance():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    shifted = np.roll(truth, 2, axis=1)
    # Shift of 2 pixels: within a 2-pixel tolerance everything matches...
    assert metrics.boundary_f_measure(shifted, truth, bound_th=2) == 1.0
    # ...with 1 pixel, of the 76 predicted boundary pixels: top and bottom rows match
    # but for their outer corner (19 + 19), the vertical edges 2 pixels away only next
    # to the truth's top and bottom rows (2 + 0). Recall is the same by symmetry.
    f_measure = metrics.boundary_f_measure(shifted, truth, bound_th=1)
    assert f_measure == pytest.approx(40 / 76)
    # DAVIS default: ceil(0.008 * diagonal of 40x40) = ceil(0.45) = 1 pixel.
    assert metrics.boundary_f_measure(shifted, truth) == pytest.approx(f_measure)


def test_mask_boundary_of_square():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    expected = mask.copy()
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(metrics.mask_boundary(mask), expected)


def test_pck():
    truth = np.zeros((4, 2))
    predicted = np.array([[0, 0], [3, 4], [0, 8], [10, 0]])
    assert metrics.pck(predicted, truth, [1, 5, 8]) == {1: 0.25, 5: 0.5, 8: 0.75}
    assert math.isnan(metrics.pck(np.zeros((0, 2)), np.zeros((0, 2)), [1])[1])


def test_depth_metrics():
    truth = np.array([1.0, 2.0, 4.0, 0.0])
    predicted = np.array([1.0, 2.2, 2.5, 7.0])  # The last pixel is invalid (depth 0).
    result = metrics.depth_metrics(predicted, truth)
    assert result["rmse"] == pytest.approx(math.sqrt((0.04 + 2.25) / 3))
    assert result["abs_rel"] == pytest.approx((0.0 + 0.1 + 0.375) / 3)
    # Ratios 1, 1.1, 1.6: 1.6 > 1.25 and > 1.25^2 = 1.5625, but < 1.25^3.
    assert result["delta1"] == pytest.approx(2 / 3)
    assert result["delta2"] == pytest.approx(2 / 3)
    assert result["delta3"] == pytest.approx(1.0)
