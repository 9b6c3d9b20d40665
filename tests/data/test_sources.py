"""Image sources: the embedded samples, folders, TFDS, and surviving bad files."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from vader_tf.data import decoding, sources


def encode(array, image_format, **save_options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(content)


def decoded_by_id(source):
    return {
        element["source_id"].decode(): element["image"]
        for element in source.dataset().as_numpy_iterator()
    }


RGB = np.random.default_rng(0).integers(0, 256, size=(12, 9, 3), dtype=np.uint8)


def test_samples_source_yields_every_bundled_photo_as_rgb():
    source = sources.samples_source()
    images = decoded_by_id(source)
    assert len(source) == len(sources.SAMPLE_IMAGE_FILES) == len(images)
    assert [os.path.basename(path) for path in images] == list(sources.SAMPLE_IMAGE_FILES)
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert source.skipped.count == 0


def test_samples_decode_to_the_files_pixels():
    for path, image in decoded_by_id(sources.samples_source()).items():
        if path.endswith(".png"):
            with Image.open(path) as original:
                np.testing.assert_array_equal(image, np.asarray(original.convert("RGB")), err_msg=path)


def test_samples_decode_without_libpng_warnings():
    # Two sample PNGs carry an sRGB profile that libpng reports (through TensorFlow's
    # C++ log, hence the log level 0) on every decode.
    code = "from vader_tf.data import sources; list(sources.samples_source().dataset())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "iCCP" not in result.stderr


def test_folder_source_is_recursive_sorted_and_mixed_format(tmp_path):
    write(tmp_path / "b" / "deep" / "one.PNG", encode(RGB, "PNG"))
    write(tmp_path / "a.bmp", encode(RGB, "BMP"))
    write(tmp_path / "b" / "two.webp", encode(RGB, "WEBP", lossless=True))
    write(tmp_path / "c.gif", encode(RGB, "GIF"))
    write(tmp_path / "b" / "three.JpEg", encode(RGB, "JPEG", quality=95))
    write(tmp_path / "notes.txt", b"not an image")
    source = sources.folder_source(str(tmp_path))
    relative = [os.path.relpath(path, tmp_path) for path in source.source_ids]
    assert relative == ["a.bmp", "b/deep/one.PNG", "b/three.JpEg", "b/two.webp", "c.gif"]
    images = decoded_by_id(source)
    assert len(images) == 5
    for path, image in images.items():
        if path.endswith((".bmp", ".PNG", ".webp")):  # Lossless.
            np.testing.assert_array_equal(image, RGB)
        assert image.shape == RGB.shape
    assert source.skipped.count == 0


def test_non_rgb_pngs_come_out_as_uint8_rgb(tmp_path):
    gray = RGB[..., 0]
    rgba = np.concatenate([RGB, np.full(RGB.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    wide = np.array([[0, 128, 255, 257, 40000, 65535]], np.uint16)
    palette = Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=16)
    write(tmp_path / "gray.png", encode(gray, "PNG"))
    write(tmp_path / "rgba.png", encode(rgba, "PNG"))
    write(tmp_path / "wide.png", encode(wide, "PNG"))
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    write(tmp_path / "palette.png", buffer.getvalue())
    images = decoded_by_id(sources.folder_source(str(tmp_path)))
    by_name = {os.path.basename(path): image for path, image in images.items()}
    np.testing.assert_array_equal(by_name["gray.png"], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(by_name["rgba.png"], RGB)
    np.testing.assert_array_equal(by_name["palette.png"], np.asarray(palette.convert("RGB")))
    expected_wide = np.round(wide / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(by_name["wide.png"], np.repeat(expected_wide[..., None], 3, -1))


def test_bad_files_are_skipped_counted_and_named(tmp_path):
    jpeg = encode(RGB, "JPEG")
    png = encode(RGB, "PNG")
    bad = {
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(64),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) - 20],
        "empty.jpg": b"",
        "text.jpg": b"this is a text file renamed to .jpg\n",
    }
    for name, content in bad.items():
        write(tmp_path / name, content)
    write(tmp_path / "good.jpg", jpeg)
    write(tmp_path / "good.png", png)
    source = sources.folder_source(str(tmp_path))
    images = decoded_by_id(source)
    assert sorted(os.path.basename(path) for path in images) == ["good.jpg", "good.png"]
    assert source.skipped.count == len(bad)
    skipped = {os.path.basename(path): reason for path, reason in source.skipped.files.items()}
    assert sorted(skipped) == sorted(bad)
    assert skipped["empty.jpg"] == "empty file"
    assert "JPEG data could not be decoded" in skipped["truncated.jpg"]
    assert "truncated PNG" in skipped["truncated.png"]
    assert "not a JPEG" in skipped["text.jpg"]


def test_structural_check_accepts_every_complete_format():
    for image_format, options in [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
                                  ("WEBP", {"lossless": True})]:
        problem = decoding.encoded_image_problem(tf.constant(encode(RGB, image_format, **options)))
        assert problem.numpy() == b"", image_format


def test_structural_check_names_truncated_and_foreign_bytes():
    for image_format, options, name in [("PNG", {}, "PNG"), ("GIF", {}, "GIF"),
                                        ("BMP", {}, "BMP"), ("WEBP", {"lossless": True}, "WebP")]:
        encoded = encode(RGB, image_format, **options)
        problem = decoding.encoded_image_problem(tf.constant(encoded[:-5]))
        assert problem.numpy().decode() == f"truncated {name} data", image_format
    for foreign in (b"BM", b"GIF8", b"RIFF", b"\x89PNG", b"%PDF-1.4 ..."):
        problem = decoding.encoded_image_problem(tf.constant(foreign)).numpy().decode()
        assert problem == "not a JPEG, PNG, GIF, BMP or WebP image", foreign
    assert decoding.encoded_image_problem(tf.constant(b"")).numpy() == b"empty file"
    assert decoding.format_name(tf.constant(encode(RGB, "GIF")[:20])).numpy() == b"GIF"


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    write(tmp_path / "readme.txt", b"no images here")
    with pytest.raises(ValueError, match=str(tmp_path)):
        sources.folder_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        sources.folder_source(str(tmp_path / "nowhere"))


def test_parse_data_spec(tmp_path):
    write(tmp_path / "x.png", encode(RGB, "PNG"))
    assert len(sources.parse_data_spec("samples")) == len(sources.SAMPLE_IMAGE_FILES)
    assert sources.parse_data_spec(f"folder:{tmp_path}").source_ids == [str(tmp_path / "x.png")]
    for spec in ("", "folder:", "web:http://x", "samples:extra", f"folder:{tmp_path},samples"):
        with pytest.raises(ValueError, match="data spec"):
            sources.parse_data_spec(spec)


def test_parse_data_spec_pools_folders(tmp_path):
    write(tmp_path / "a" / "1.png", encode(RGB, "PNG"))
    write(tmp_path / "b" / "2.png", encode(RGB, "PNG"))
    pooled = sources.parse_data_spec(f"folder:{tmp_path / 'b'},folder:{tmp_path / 'a'}")
    assert pooled.source_ids == [str(tmp_path / "a" / "1.png"), str(tmp_path / "b" / "2.png")]


class TinyPictures(tfds.core.GeneratorBasedBuilder):
    """A local TFDS dataset whose image feature is not called "image"."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "label": tfds.features.ClassLabel(num_classes=2),
            "picture": tfds.features.Image(shape=(None, None, 3)),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {"train": self._generate_examples(4)}

    def _generate_examples(self, count):
        for index in range(count):
            picture = np.full((6 + index, 5, 3), 40 * index, np.uint8)
            yield index, {"label": index % 2, "picture": picture}


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        sources.tfds_source("tiny_pictures", data_dir=data_dir)
    TinyPictures(data_dir=data_dir, file_format="array_record").download_and_prepare()
    source = sources.tfds_source("tiny_pictures", "train", data_dir=data_dir)
    assert source.source_ids == [f"tfds:tiny_pictures:train:{index}" for index in range(4)]
    images = list(source.dataset().as_numpy_iterator())
    assert len(images) == 4
    # TFDS shuffles examples when preparing: identify each by its constant fill value.
    fills = sorted(int(element["image"][0, 0, 0]) for element in images)
    assert fills == [0, 40, 80, 120]
    for element in images:
        assert element["image"].shape == (6 + element["image"][0, 0, 0] // 40, 5, 3)
    with pytest.raises(ValueError, match="no split"):
        sources.tfds_source("tiny_pictures", "test", data_dir=data_dir)


def test_tfds_source_streams_a_tfrecord_preparation(tmp_path):
    from vader_tf.data import pipeline
    from vader_tf.data.views import ViewConfig

    data_dir = str(tmp_path)
    TinyPictures(data_dir=data_dir).download_and_prepare()  # TFDS' default: TFRecord
    source = sources.tfds_source("tiny_pictures", "train", data_dir=data_dir)
    assert isinstance(source, sources.TfdsRecordSource) and len(source) == 4
    fills = sorted(int(e["image"][0, 0, 0]) for e in source.dataset().as_numpy_iterator())
    assert fills == [0, 40, 80, 120]

    def stream_fills(**kwargs):
        elements = source.stream(seed=3, **kwargs).take(10).as_numpy_iterator()
        return [(int(e["global_index"]), int(e["image"][0, 0, 0])) for e in elements]

    full = stream_fills()
    assert [g for g, _ in full] == list(range(10))
    assert sorted(f for _, f in full[:4]) == [0, 40, 80, 120]  # each epoch visits all
    assert stream_fills() == full  # deterministic under the seed
    assert stream_fills(start_index=6)[:4] == full[6:10]  # resume = skipping
    assert stream_fills(num_shards=2, shard_index=1)[:3] == full[1:7:2]

    views = ViewConfig(image_size=32).geometric_only()
    batch = next(iter(pipeline.two_view_dataset(source, views, batch_size=2, num_points=4)))
    assert batch["view1"].shape == (2, 32, 32, 3)
