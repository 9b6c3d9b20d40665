"""The batched two-view pipeline: format, determinism, resume, odd inputs."""

import numpy as np
import pytest
from PIL import Image

from vader_tf.data import sources
from vader_tf.data.ordering import index_stream
from vader_tf.data.pipeline import two_view_dataset
from vader_tf.data.views import ViewConfig

IMAGE_SIZE = 32
NUM_POINTS = 4
CONFIG = ViewConfig(image_size=IMAGE_SIZE)


def write_images(folder):
    """Five small random images of different shapes, one smaller than any crop."""
    rng = np.random.default_rng(0)
    shapes = [(40, 56), (64, 48), (33, 90), (5, 7), (50, 50)]
    for index, (height, width) in enumerate(shapes):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{index}.png")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_images(folder)
    return str(folder)


def take_batches(dataset, count):
    return list(dataset.take(count).as_numpy_iterator())


def assert_same_batches(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for batch_a, batch_b in zip(batches_a, batches_b):
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)


def test_batch_format(tmp_path):
    write_images(tmp_path)
    broken = tmp_path / "image_9_broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    source = sources.folder_source(str(tmp_path))
    dataset = two_view_dataset(source, CONFIG, batch_size=3, num_points=NUM_POINTS)
    spec = dataset.element_spec
    assert sorted(spec) == ["points1", "points2", "valid", "view1", "view2"]
    assert spec["view1"].shape == spec["view2"].shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert spec["points1"].shape == spec["points2"].shape == (3, NUM_POINTS, 2)
    assert spec["valid"].shape == (3,)
    # Several epochs: every image (the tiny 5 x 7 one too) goes through, the broken one not.
    for batch in take_batches(dataset, 5):
        for view in (batch["view1"], batch["view2"]):
            assert view.dtype == np.float32 and view.min() >= 0 and view.max() <= 255
        assert batch["valid"].dtype == bool
    assert list(source.skipped.files) == [str(broken)]
    assert source.skipped.count >= 2  # Counted again in every epoch.


def test_same_seed_same_batches_other_seed_other_batches(image_folder):
    def run(seed):
        dataset = two_view_dataset(f"folder:{image_folder}", CONFIG, batch_size=2,
                                   num_points=NUM_POINTS, seed=seed)
        return take_batches(dataset, 4)

    first = run(seed=3)
    assert_same_batches(first, run(seed=3))
    other = run(seed=4)
    assert not np.array_equal(first[0]["view1"], other[0]["view1"])
    assert not np.array_equal(first[0]["points1"], other[0]["points1"])


def test_resume_equals_skipping_the_uninterrupted_stream(image_folder):
    def stream(start_index):
        dataset = two_view_dataset(f"folder:{image_folder}", CONFIG, batch_size=2,
                                   num_points=NUM_POINTS, seed=5, start_index=start_index)
        return take_batches(dataset.unbatch().batch(1), 14 - start_index)

    uninterrupted = stream(0)
    for start_index in (3, 7):  # Within the first epoch of 5 images, and across it.
        assert_same_batches(stream(start_index), uninterrupted[start_index:])


def test_index_stream_permutes_each_epoch_and_resumes_without_reading():
    stream = list(index_stream(5, seed=1).take(15).as_numpy_iterator())
    assert [g for g, _ in stream] == list(range(15))
    epochs = [[f for _, f in stream[e * 5:(e + 1) * 5]] for e in range(3)]
    assert all(sorted(epoch) == list(range(5)) for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert list(index_stream(5, seed=1, start_index=7).take(8).as_numpy_iterator()) == stream[7:]
    ordered = list(index_stream(5, shuffle=False, repeat=False).as_numpy_iterator())
    assert ordered == [(g, g) for g in range(5)]
    with pytest.raises(ValueError, match="single epoch"):
        index_stream(5, start_index=5, repeat=False)


def test_single_epoch_without_repeat(image_folder):
    dataset = two_view_dataset(f"folder:{image_folder}", CONFIG, batch_size=2,
                               num_points=NUM_POINTS, repeat=False, shuffle=False)
    # Five readable images -> two full batches; the remainder is dropped.
    assert len(take_batches(dataset, 10)) == 2
