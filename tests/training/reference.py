"""NumPy re-derivations the training tests compare against."""

import numpy as np


def info_nce(queries, positives, negatives, temperature):
    """Per-row InfoNCE loss and its gradient with respect to the queries."""
    logits = np.concatenate(
        [np.sum(queries * positives, axis=1, keepdims=True), queries @ negatives.T], axis=1
    ) / temperature
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    loss = -np.log(probabilities[:, 0])
    candidates = np.concatenate([positives[:, None, :], np.broadcast_to(negatives, (len(queries),) + negatives.shape)], axis=1)
    grad = (np.einsum("nk,nkd->nd", probabilities, candidates) - positives) / temperature
    return loss, grad


def bilinear(feature_map, points):
    """Samples one `[h, w, C]` map at `[P, 2]` (y, x) grid coordinates, clamped."""
    h, w, _ = feature_map.shape
    out = []
    for y, x in points:
        y = min(max(y, 0.0), h - 1.0)
        x = min(max(x, 0.0), w - 1.0)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        dy, dx = y - y0, x - x0
        out.append(
            (1 - dy) * ((1 - dx) * feature_map[y0, x0] + dx * feature_map[y0, x1])
            + dy * ((1 - dx) * feature_map[y1, x0] + dx * feature_map[y1, x1])
        )
    return np.stack(out)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
