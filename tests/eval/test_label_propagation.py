"""Label propagation recovers masks when features are an oracle; DAVIS protocol wiring."""

import numpy as np
import pytest

from vader_tf.eval import davis
from vader_tf.eval.label_propagation import propagate_frame, propagate_labels
from vader_tf.eval.protocols import DavisProtocol


def _oracle_video(num_frames=6, size=16):
    """Masks of a square moving one cell per frame, and oracle features: one-hot of the
    true label (weight 1) concatenated with a weak code of the cell position."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    position = 0.05 * np.stack(
        [np.cos(rows / size * np.pi), np.sin(rows / size * np.pi),
         np.cos(cols / size * np.pi), np.sin(cols / size * np.pi)], axis=-1
    )
    masks, features = [], []
    for t in range(num_frames):
        mask = np.zeros((size, size), np.int64)
        mask[4:10, 2 + t : 8 + t] = 1
        frame = np.concatenate([np.eye(2)[mask], position], axis=-1)
        masks.append(mask)
        features.append(frame / np.linalg.norm(frame, axis=-1, keepdims=True))
    return masks, features


# With a radius of 3 cells the square (moving 1 cell per frame) leaves the first frame's
# search window after 3 frames, so that case needs the previous frames as context.
@pytest.mark.parametrize("radius, context_frames", [(None, 0), (None, 2), (6, 0), (3, 2)])
def test_oracle_features_recover_masks(radius, context_frames):
    masks, features = _oracle_video()
    first_labels = np.eye(2)[masks[0]]
    predictions = list(
        propagate_labels(
            features, first_labels, context_frames, topk=5, temperature=0.07, radius=radius
        )
    )
    assert len(predictions) == len(masks) - 1
    for prediction, mask in zip(predictions, masks[1:]):
        np.testing.assert_allclose(prediction.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(prediction.argmax(-1), mask)


def test_davis_sequence_with_color_oracle(davis_root, color_extractor):
    assert davis.list_sequences(davis_root) == ["square"]
    frames, annotations = davis.sequence_files(davis_root, "square")
    result = davis.evaluate_sequence(
        color_extractor, frames, annotations, DavisProtocol(image_size=72, topk=5, radius=4)
    )
    assert result["num_frames"] == 5 and result["num_objects"] == 1
    assert len(result["J_per_frame"]) == 4
    assert result["J"] > 0.9 and result["F"] > 0.9


def test_davis_missing_sequence_is_named(davis_root):
    with pytest.raises(FileNotFoundError, match="nope"):
        davis.sequence_files(davis_root, "nope")


def _numpy_propagate_frame(query, references, labels, topk, temperature, radius):
    """Brute-force NumPy reference of `propagate_frame`, one query cell at a time."""
    height, width, _ = query.shape
    output = np.zeros((height, width, labels.shape[-1]))
    for y in range(height):
        for x in range(width):
            candidates = []
            for r in range(references.shape[0]):
                for v in range(height):
                    for u in range(width):
                        if radius is None or (y - v) ** 2 + (x - u) ** 2 <= radius**2:
                            candidates.append((query[y, x] @ references[r, v, u], labels[r, v, u]))
            candidates.sort(key=lambda c: -c[0])
            top = candidates[:topk]
            logits = np.array([c[0] for c in top]) / temperature
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            output[y, x] = sum(w * c[1] for w, c in zip(weights, top))
    return output


# Without a radius, a chunk size that does not divide the 35 cells exercises the last
# partial chunk; with one, tiles of 1, 2, 3 and 8 cells cover the 5 x 7 grid with partial
# tiles, windows reaching past every border, and (radius 0.5: one candidate per frame,
# fewer than topk) -inf candidates in the top k.
@pytest.mark.parametrize(
    "radius, tile",
    [(None, 8), (2.5, 8), (2.5, 3), (2.5, 2), (1.0, 1), (0.5, 2), (4, 3), (100.0, 2)],
)
def test_propagate_frame_matches_numpy(radius, tile):
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, 7, 8)).astype(np.float32)
    references = rng.normal(size=(3, 5, 7, 8)).astype(np.float32)
    labels = rng.dirichlet(np.ones(3), size=(3, 5, 7)).astype(np.float32)
    expected = _numpy_propagate_frame(query, references, labels, 4, 0.5, radius)
    actual = propagate_frame(
        query, references, labels, topk=4, temperature=0.5, radius=radius, chunk_size=16,
        tile=tile,
    )
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
