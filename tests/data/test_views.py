"""MoCo v2 views: crop boxes, geometry-preserving rendering, photometric settings."""

import dataclasses

import numpy as np
import tensorflow as tf

from vader_tf.data import views
from vader_tf.data.views import ViewConfig


def test_crop_boxes_fit_and_follow_scale_and_aspect_ratio():
    config = ViewConfig()
    boxes = views.sample_crop_boxes(tf.constant([0, 1]), tf.constant([300, 400]), 500, config)
    y0, x0, h, w = boxes.numpy().T
    assert np.all((y0 >= 0) & (x0 >= 0) & (y0 + h <= 300) & (x0 + w <= 400))
    area_fraction = h * w / (300 * 400)
    assert area_fraction.min() > 0.18 and area_fraction.max() <= 1.0
    assert np.all((w / h > 0.7) & (w / h < 1.4))
    assert len(set(map(tuple, boxes.numpy()))) > 450


def test_crop_boxes_fall_back_to_a_centre_crop_for_extreme_shapes():
    config = ViewConfig(crop_scale=(0.99, 1.0), crop_attempts=2)
    boxes = views.sample_crop_boxes(tf.constant([0, 2]), tf.constant([10, 100]), 4, config)
    # 10 x 100 cannot hold a 3/4..4/3 crop of 99% area: largest centred box of ratio 4/3.
    np.testing.assert_array_equal(boxes.numpy(), [[0, 43, 10, 13]] * 4)


def test_geometric_view_of_the_full_image_is_the_image():
    image = tf.random.stateless_uniform([16, 16, 3], seed=[1, 2], maxval=255.0)
    config = ViewConfig(image_size=16).geometric_only()
    box = tf.constant([0, 0, 16, 16])
    seed = tf.constant([0, 0])
    view = views.render_view(image, box, tf.constant(False), seed, config)
    np.testing.assert_allclose(view.numpy(), image.numpy(), atol=1e-4)
    flipped = views.render_view(image, box, tf.constant(True), seed, config)
    np.testing.assert_allclose(flipped.numpy(), image.numpy()[:, ::-1], atol=1e-4)


def test_photometric_steps_are_seeded_and_can_each_be_turned_off():
    image = tf.random.stateless_uniform([40, 40, 3], seed=[3, 4], maxval=255.0)
    box = tf.constant([2, 3, 30, 30])
    config = ViewConfig(image_size=32, color_jitter_prob=1.0, grayscale_prob=0.0, blur_prob=1.0)

    def render(seed, config=config):
        return views.render_view(image, box, tf.constant(False), tf.constant(seed), config).numpy()

    first = render([5, 6])
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, render([5, 6]))
    assert not np.array_equal(first, render([5, 7]))
    plain = render([5, 6], config.geometric_only())
    assert not np.allclose(first, plain)
    no_strength = dataclasses.replace(config, brightness=0, contrast=0, saturation=0, hue=0,
                                      blur_prob=0)
    np.testing.assert_allclose(render([5, 6], no_strength), plain, atol=1e-3)
    gray = render([5, 6], dataclasses.replace(config.geometric_only(), grayscale_prob=1.0))
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-3)
