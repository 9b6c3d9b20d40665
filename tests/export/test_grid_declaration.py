"""The grid an export declares is where the exported model puts its cells.

`vader_export.json` declares, for every output, its stride and the input coordinate of
cell (0, 0)'s centre. The declared centres are checked against probes of the exported
SavedModel itself (its signatures, uint8 pixels in), with the network made left-right
and up-down symmetric (`tests/models/grid_probes.py`):

- the receptive-field probe (`impulse_centres`) for the linear outputs `P2`..`P5` and
  `decoder` of a positive averaging network, in x and (transposed) in y;
- the flip probe (`flip_shift`) for the L2-normalised `features` and `embedding`, which
  the impulse probe cannot read (normalisation is not additive).

The oracle is the network's response; the declaration is only read from the JSON.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.export.helpers import small_encoder
from tests.models import grid_probes
from vader_tf import serving_contract
from vader_tf.export import saved_model
from vader_tf.models.layers import IMAGENET_MEAN
from vader_tf.ops import grid as grid_lib

WIDTH = 512  # Wider than the impulse responses spread (as in test_grid_alignment).


def _symmetric_export(tmp_path_factory, positive):
    keras.utils.set_random_seed(0)
    encoder = grid_probes.make_symmetric(small_encoder(), positive=positive)
    for layer in grid_probes._convolutions(encoder):  # Also up-down symmetric.
        layer.kernel.assign(0.5 * (layer.kernel.numpy() + layer.kernel.numpy()[::-1]))
    base = str(tmp_path_factory.mktemp("grid") / "vader")
    path = saved_model.export_saved_model(encoder, base, sample_size=64, num_sample_images=1)
    with open(os.path.join(path, serving_contract.METADATA_FILE)) as f:
        declared = json.load(f)["grid"]["outputs"]
    return tf.saved_model.load(path), declared, encoder


@pytest.fixture(scope="module")
def positive_export(tmp_path_factory):
    return _symmetric_export(tmp_path_factory, positive=True)


@pytest.fixture(scope="module")
def signed_export(tmp_path_factory):
    return _symmetric_export(tmp_path_factory, positive=False)


def _pyramid(loaded, pixels):
    outputs = loaded.signatures["pyramid"](images=tf.constant(pixels))
    return {name: value.numpy().astype(np.float64) for name, value in outputs.items()}


def _transposed(apply):
    """`apply` along y: images and outputs transposed (height <-> width)."""

    def along_y(images):
        outputs = apply(np.swapaxes(images, 1, 2))
        return {name: np.swapaxes(value, 1, 2) for name, value in outputs.items()}

    return along_y


def test_declared_centres_of_levels_and_decoder_are_the_receptive_field_centres(
    positive_export,
):
    loaded, declared, _ = positive_export
    # uint8 pixels whose standardised value is >= 0 (the positive network then responds
    # monotonically): the impulse response is the response minus the background's.
    background = np.ceil(np.asarray(IMAGENET_MEAN)).astype(np.uint8)
    names = {name: declared[name]["stride"] for name in ("P2", "P3", "P4", "P5", "decoder")}

    def apply(normalised):
        pixels = background + np.round(100 * normalised).astype(np.uint8)
        empty = np.broadcast_to(background, normalised.shape).astype(np.uint8)
        response, base = _pyramid(loaded, pixels), _pyramid(loaded, empty)
        return {name: response[name] - base[name] for name in names}

    measured = {
        "x": grid_probes.impulse_centres(apply, names, WIDTH),
        "y": grid_probes.impulse_centres(_transposed(apply), names, WIDTH),
    }
    for axis, centres in measured.items():
        for name, (cell, centre) in centres.items():
            y0, x0 = declared[name]["cell_centre"]
            stride = declared[name]["stride"]
            expected = (x0 if axis == "x" else y0) + stride * cell
            assert abs(centre - expected) < 1e-2, (axis, name, cell, centre, expected)


def test_declared_centres_of_normalised_outputs_match_the_flip_probe(signed_export):
    loaded, declared, _ = signed_export
    width = 256
    # 64 high: `windowed_images` blurs with 49 taps, which a shorter side would outgrow.
    normalised = grid_probes.windowed_images(2, 64, width, margin=48, sigma=8.0)
    pixels = np.clip(np.round(grid_probes.pixels_from_normalised(normalised)), 0, 255)

    def along_x(name):
        return lambda images: _pyramid(loaded, images.astype(np.uint8))[name]

    def along_y(name):
        return lambda images: np.swapaxes(along_x(name)(np.swapaxes(images, 1, 2)), 1, 2)

    for name in ("features", "embedding"):
        stride = declared[name]["stride"]
        for axis, apply, centre in (
            ("x", along_x(name), declared[name]["cell_centre"][1]),
            ("y", along_y(name), declared[name]["cell_centre"][0]),
        ):
            # Cell j at c + s j shows, flipped, position W - c - s j: grid coordinate
            # (W - 2c) / s - j of the unflipped map, i.e. cell n - 1 - that of its mirror.
            expected = width // stride - 1 - (width - 2 * centre) / stride
            # Along y the probe sees the transposed model: `pixels` are then its input
            # transposed (256 high, 32 wide).
            shift = grid_probes.flip_shift(apply, pixels, 12)
            assert abs(shift - expected) < 0.2, (name, axis, shift, expected)


def test_the_keras_config_declares_the_same_grid(signed_export):
    _, declared, encoder = signed_export
    config_grid = encoder.get_config()["grid"]
    assert {name: declared[name] for name in config_grid if name in declared} == {
        name: value for name, value in config_grid.items() if name != "fused"
    }
    assert declared["features"] == config_grid["fused"]
    assert set(declared) == set(serving_contract.PYRAMID_OUTPUTS)


def _docs_snippet():
    """The plain-TF code of docs/export.md's grid section, executed."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "export.md")) as f:
        text = f.read()
    section = text[text.index("### Where the cells are") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    namespace = {"labels": tf.zeros([1, 8, 8], tf.int32)}
    exec(code, namespace)  # pylint: disable=exec-used
    return namespace


def test_the_documented_snippets_put_values_on_the_grid_convention():
    snippet = _docs_snippet()
    # Coordinate-encoded features: each cell holds its own centre's x coordinate, 4j + 0.5
    # by the convention (written out here, not taken from the code under test).
    height, width, stride = 32, 48, 4
    centres = stride * np.arange(width // stride, dtype=np.float32) + 0.5
    cells = (1, height // stride, width // stride)
    features = tf.constant(np.broadcast_to(centres, cells)[..., None])
    pixel_centres = np.arange(width) + 0.5
    inner = slice(2, width - 4)  # Past the last cell centre the border is repeated.
    up = snippet["features_to_pixels"](features, height, width).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(up[inner], pixel_centres[inner], atol=1e-5)
    # tf.image.resize's half-pixel centres put every value 1.5 pixels off at stride 4.
    naive = tf.image.resize(features, [height, width]).numpy()[0, 0, :, 0]
    np.testing.assert_allclose((pixel_centres - naive)[inner], 1.5, atol=1e-5)

    labels = np.random.default_rng(0).integers(0, 4, (2, 30, 22))  # 3 = void here.
    cells = snippet["labels_to_cells"](tf.constant(labels), 3).numpy()
    onehot = np.eye(4)[labels][..., :3]
    for image, expected in zip(onehot, cells):
        valid = grid_lib.pool_to_grid(image.sum(-1))
        pooled = grid_lib.pool_to_grid(image) / np.maximum(valid, 1e-6)[..., None]
        np.testing.assert_allclose(expected, pooled, atol=1e-5)
