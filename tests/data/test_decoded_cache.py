"""`ImageSource.cache_decoded`: decode once, bounded, and the training stream unchanged."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vader_tf.data import sources
from vader_tf.data.pipeline import two_view_dataset
from vader_tf.data.views import ViewConfig
from vader_tf.training.pretrain import PretrainConfig

CONFIG = ViewConfig(image_size=32)
SHAPES = [(40, 56), (64, 48), (33, 90), (5, 7), (50, 50)]
DECODED_BYTES = sum(h * w * 3 for h, w in SHAPES)


@pytest.fixture
def folder_with_a_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(SHAPES):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"image_{index}.png")
    # Passes the structural check (JPEG magic), fails to decode.
    (tmp_path / "image_2b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return str(tmp_path)


def _batches(source, count=4, **kwargs):
    dataset = two_view_dataset(source, CONFIG, batch_size=3, num_points=4, seed=7, **kwargs)
    return list(dataset.take(count).as_numpy_iterator())


def _count_reads(source):
    """Wraps the source's reader so that every read is counted (from tf.data threads)."""
    reads = []
    read = source._read_encoded

    def counting_read(index):
        tf.py_function(lambda: reads.append(1), [], Tout=[])
        return read(index)

    source._read_encoded = counting_read
    return reads


def test_cached_stream_is_bitwise_the_uncached_one_and_reads_each_file_once(
    folder_with_a_bad_file, caplog
):
    plain = sources.folder_source(folder_with_a_bad_file)
    cached = sources.folder_source(folder_with_a_bad_file)
    reads = _count_reads(cached)
    caplog.set_level(logging.INFO)
    assert cached.cache_decoded(2**20)
    assert f"Cached 5 decoded images of image folder(s) {folder_with_a_bad_file} in memory: 0.0 MB" in caplog.text
    assert cached.cached_bytes == DECODED_BYTES + 3  # The bad file's 1x1 placeholder.
    assert len(reads) == len(cached) == 6
    # 4 batches of 3 pairs from 5 good images: over two epochs; and a resume.
    for kwargs in ({}, {"start_index": 4}):
        expected, got = _batches(plain, **kwargs), _batches(cached, **kwargs)
        for batch_a, batch_b in zip(expected, got):
            for key in batch_a:
                np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)
    assert len(reads) == 6  # Nothing read again.
    # The bad file: named, and counted once (decoded once), however many epochs ran.
    assert list(cached.skipped.files) == [f"{folder_with_a_bad_file}/image_2b_broken.jpg"]
    assert "could not be decoded" in cached.skipped.files[f"{folder_with_a_bad_file}/image_2b_broken.jpg"]
    assert cached.skipped.count == 1
    assert plain.skipped.count >= 2  # Uncached: counted in every epoch.


def test_over_the_bound_the_source_stays_uncached(folder_with_a_bad_file, caplog):
    source = sources.folder_source(folder_with_a_bad_file)
    caplog.set_level(logging.INFO)
    assert not source.cache_decoded(DECODED_BYTES // 2)
    assert "Not caching decoded images of image folder(s)" in caplog.text
    assert source.cached_bytes is None
    assert not source.cache_decoded(0)
    reads = _count_reads(source)
    _batches(source, count=1)
    assert len(reads) >= 3  # Read (and decoded) on every load, as before.


def test_all_bad_source_fails_in_the_caching_pass(tmp_path):
    for index in range(2):
        (tmp_path / f"bad_{index}.png").write_bytes(b"not an image")
    source = sources.folder_source(str(tmp_path))
    with pytest.raises(sources.NoUsableImagesError, match="all 2 images were rejected"):
        source.cache_decoded(2**20)


def test_samples_fit_the_default_bound():
    source = sources.samples_source()
    assert source.cache_decoded(512 * 2**20)
    assert 0 < source.cached_bytes < 64 * 2**20
    assert source.skipped.count == 0


def test_negative_bound_is_a_bad_setting():
    with pytest.raises(ValueError, match="^cache_decoded_mb must be at least 0, got -1.$"):
        PretrainConfig(cache_decoded_mb=-1).validate()
