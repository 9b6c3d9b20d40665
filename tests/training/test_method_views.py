"""Each method's view sampling: MoCo v2's independent crops, VADeR's overlapping pairs."""

import numpy as np
import pytest
from PIL import Image

from vader_tf.data import sources
from vader_tf.training import pretrain

SIDE = 96


def _coordinate_photo(folder):
    # Red encodes the row, green the column: a view's values tell which part it shows.
    ramp = np.linspace(0, 255, SIDE)
    image = np.stack(
        [np.repeat(ramp[:, None], SIDE, 1), np.repeat(ramp[None, :], SIDE, 0), np.zeros((SIDE, SIDE))],
        axis=-1,
    )
    Image.fromarray(image.round().astype("uint8")).save(f"{folder}/coords.png")


def _disjoint_pairs(config, folder, num_batches=4):
    source = sources.parse_data_spec(f"folder:{folder}")
    dataset = pretrain.training_dataset(config, source, batch_size=16)
    count = 0
    for batch in dataset.take(num_batches):
        for view1, view2 in zip(batch["view1"].numpy(), batch["view2"].numpy()):
            # Row and column ranges each view covers (one ramp step of slack).
            ranges = [(v[..., c].min(), v[..., c].max()) for v in (view1, view2) for c in (0, 1)]
            (y1, x1, y2, x2), step = ranges, 255 / (SIDE - 1)
            apart = [a[1] + step < b[0] or b[1] + step < a[0] for a, b in ((y1, y2), (x1, x2))]
            count += any(apart)
    return count


@pytest.mark.parametrize("method", ["moco", "vader"])
def test_moco_views_may_be_disjoint_vader_views_overlap(tmp_path, method):
    _coordinate_photo(tmp_path)
    config = pretrain.PretrainConfig(
        method=method,
        image_size=32,
        num_points=4,
        min_crop_scale=0.02,
        color_jitter=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
    )
    disjoint = _disjoint_pairs(config, tmp_path)
    if method == "moco":
        # Two independent crops of 2%-100% of the image: some of 64 pairs miss each other.
        assert disjoint >= 3
    else:
        assert disjoint == 0
