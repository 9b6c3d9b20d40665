"""Image sources: where pre-training images come from, and how bad files are survived.

Every source is an `ImageSource`: a fixed-length, index-addressable collection of encoded
images. Addressing by index lets the two-view pipeline shuffle and resume on *indices*
before anything is read or decoded. The exception is a TFDS dataset prepared as TFRecord
files, which has no random access: `TfdsRecordSource` is read as a seeded stream. `ImageSource.dataset()` gives the plain
`tf.data.Dataset` of `{"image": uint8 [H, W, 3], "source_id": tf.string}` in index order.

Bad input (unreadable, empty, truncated, corrupt or non-image files) is skipped, never
fatal, and every skip is named and counted. A cheap in-graph structural check (magic
bytes, and for PNG, GIF, BMP and WebP the end-of-stream marker or declared size) gives a
precise reason for most bad files; reading and decoding run inside `_attempt`, so a file
that passes the check but still cannot be read or decoded is caught in graph as well. A
failing element calls a rare `tf.py_function` that logs the source id with the reason and
records it in the source's `SkipCounter`. JPEG data after the end-of-image marker (phone
"motion photos", camera trailers) is accepted, as TensorFlow and PIL decode it.

When every image of a source has been rejected, the counter raises `NoUsableImagesError`
instead of letting an endless stream filter out everything forever.

Small sources can be served decoded: `ImageSource.cache_decoded(max_bytes)` decodes every
image once, keeps the pixels in memory if their total size stays within the bound, and
from then on `load` slices them out of memory instead of reading and decoding. `load`
returns exactly what it returned before (same pixels, same `ok`, same placeholder for a
bad file), so the training stream is bitwise the same with and without the cache. A bad
file is named and counted once, in the decoding pass (it is never decoded again).
"""

import difflib
import contextlib
import os
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.data import ordering

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# The real photographs shipped inside the scikit-image wheel (no download needed).
SAMPLE_IMAGE_FILES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # An empty IEND chunk with its CRC.


class NoUsableImagesError(ValueError):
    """Every image of a source was rejected as unreadable: there is nothing to train on."""


class SkipCounter:
    """Thread-safe record of the inputs a pipeline skipped as unreadable.

    Args:
        total: number of distinct inputs of the source. When all of them have been
            skipped, `record` raises `NoUsableImagesError` (kept in `error`).
        description: what the source is, for that error.

    Attributes:
        count: number of skip events (a bad file read in several epochs counts each time;
            a source served from its decoded cache decodes, and counts, each file once).
        files: `{source_id: reason}` for every distinct skipped input.
        error: the `NoUsableImagesError` raised once every input was rejected, else None.
    """

    def __init__(self, total=None, description="the image source"):
        self._lock = threading.Lock()
        self.total = total
        self.description = description
        self.count = 0
        self.files = {}
        self.error = None

    def record(self, source_id, reason):
        """Counts one skip; logs a warning the first time `source_id` is skipped.

        Raises:
            NoUsableImagesError: every input of the source has now been rejected.
        """
        with self._lock:
            self.count += 1
            first_time = source_id not in self.files
            self.files[source_id] = reason
            if self.total and len(self.files) >= self.total and self.error is None:
                self.error = NoUsableImagesError(
                    f"No usable image in {self.description}: all {len(self.files)} images "
                    "were rejected (each is named in a warning above)."
                )
        if first_time:
            logging.warning("Skipping unreadable image %s: %s", source_id, reason)
        if self.error is not None:
            raise self.error


def _attempt(compute, fallback):
    """`(compute(), True)`, or `(fallback, False)` if `compute` fails (graph-compatible).

    The computation runs as a one-element `tf.data` pipeline whose op errors are dropped,
    so a failing read or decode becomes a value instead of an error of the whole stream.
    """
    result = tf.data.Dataset.from_tensors(0).map(lambda _: (compute(), True)).ignore_errors()
    failed = tf.data.Dataset.from_tensors((fallback, False))
    return result.concatenate(failed).take(1).get_single_element()


def _attempt_read(read):
    """`(bytes, True)` from `read()`, or `(b"", False)` if reading fails."""
    return _attempt(read, tf.constant(b""))


class _CheckedDecoding:
    """What every source shares: a description, a `SkipCounter`, the checked decode."""

    def __init__(self, description, num_images):
        self.description = description
        self.skipped = SkipCounter(num_images, description)

    def check_and_decode(self, encoded, source_id, readable=True):
        """Decodes `encoded` bytes, or counts `source_id` as skipped.

        Args:
            encoded: scalar `tf.string`, the encoded image.
            source_id: scalar `tf.string` naming it in warnings.
            readable: False when reading the bytes failed (`encoded` is then empty).

        Returns:
            `{"image": uint8 [H, W, 3], "source_id": string, "ok": bool}`. When `ok` is
            False the input could not be read, failed the structural check or could not be
            decoded (and was counted as skipped) and `image` is a 1x1 placeholder: filter
            it out.
        """
        placeholder = tf.zeros([1, 1, 3], tf.uint8)
        problem = tf.where(readable, encoded_image_problem(encoded), "could not be read")
        passed_check = tf.equal(problem, "")
        image, decoded = tf.cond(
            passed_check,
            lambda: _attempt(lambda: decode_rgb(encoded), placeholder),
            lambda: (placeholder, tf.constant(False)),
        )
        problem = tf.where(
            tf.logical_and(passed_check, tf.logical_not(decoded)),
            tf.strings.join(
                [_format_name(encoded), " data could not be decoded (corrupt or truncated)"]
            ),
            problem,
        )
        ok = tf.logical_and(passed_check, decoded)

        def record_skip():
            tf.py_function(self._record_skip, [source_id, problem], Tout=[])
            return tf.identity(image)

        image = tf.cond(ok, lambda: tf.identity(image), record_skip)
        return {"image": tf.ensure_shape(image, [None, None, 3]), "source_id": source_id, "ok": ok}

    def _record_skip(self, source_id, problem):
        self.skipped.record(source_id.numpy().decode(), problem.numpy().decode())

    @contextlib.contextmanager
    def no_usable_images_reraised(self):
        """Reading this source's pipelines inside: the `tf.errors.OpError` that carries a
        `NoUsableImagesError` out of `tf.data` is re-raised as that error itself."""
        try:
            yield
        except tf.errors.OpError:
            if self.skipped.error is not None:
                raise self.skipped.error from None
            raise


class ImageSource(_CheckedDecoding):
    """A fixed-length collection of encoded images addressed by index.

    Args:
        source_ids: one string per image: a file path or `"tfds:NAME:SPLIT:INDEX"`.
        read_encoded: maps a scalar int64 index tensor to the encoded image bytes (a scalar
            `tf.string`). A read that fails counts the image as skipped.
        description: what the source is, for error messages.
    """

    def __init__(self, source_ids, read_encoded, description):
        if not source_ids:
            raise ValueError(f"No images found in {description}.")
        super().__init__(description, len(set(source_ids)))
        self.source_ids = list(source_ids)
        self._read_encoded = read_encoded
        self._source_id_table = tf.constant(self.source_ids, dtype=tf.string)
        self._decoded = None  # Set by `cache_decoded`.

    def __len__(self):
        return len(self.source_ids)

    def load(self, index):
        """Reads, checks and decodes image `index` (graph-compatible); the element is
        described in `check_and_decode`. Served from memory after `cache_decoded`."""
        index = tf.cast(index, tf.int64)
        source_id = tf.gather(self._source_id_table, index)
        if self._decoded is not None:
            pixels, offsets, shapes, ok = self._decoded
            image = tf.reshape(pixels[offsets[index] : offsets[index + 1]], shapes[index])
            image = tf.ensure_shape(image, [None, None, 3])
            return {"image": image, "source_id": source_id, "ok": ok[index]}
        encoded, readable = _attempt_read(lambda: self._read_encoded(index))
        return self.check_and_decode(encoded, source_id, readable)

    @property
    def cached_bytes(self):
        """Size of the decoded cache in bytes, or None when the source is not cached."""
        return None if self._decoded is None else int(self._decoded[0].shape[0])

    def cache_decoded(self, max_bytes):
        """Decodes every image once and serves the pixels from memory, if they fit.

        Bad files are named and counted (once) during this pass, and an all-bad source
        raises `NoUsableImagesError` here. The pass stops as soon as the decoded total
        exceeds `max_bytes`; the source then stays uncached (it reads and decodes on
        every `load`, as before). Logs the outcome in one line.

        Args:
            max_bytes: bound on the decoded pixels kept (uint8 RGB); 0 disables.

        Returns:
            True when the source is now served from memory.
        """
        if max_bytes <= 0 or self._decoded is not None:
            return self._decoded is not None
        elements = tf.data.Dataset.range(len(self)).map(
            self.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        images, ok, total = [], [], 0
        with self.no_usable_images_reraised():
            for element in elements:
                image = element["image"].numpy()
                total += image.nbytes
                if total > max_bytes:
                    logging.info(
                        "Not caching decoded images of %s: more than %.0f MB after %d of %d "
                        "images.", self.description, max_bytes / 2**20, len(images) + 1, len(self),
                    )
                    return False
                images.append(image)
                ok.append(bool(element["ok"]))
        sizes = [image.size for image in images]
        self._decoded = (
            tf.constant(np.concatenate([image.reshape(-1) for image in images])),
            tf.constant(np.cumsum([0] + sizes), tf.int64),
            tf.constant([image.shape for image in images], tf.int64),
            tf.constant(ok),
        )
        logging.info(
            "Cached %d decoded images of %s in memory: %.1f MB.",
            sum(ok), self.description, total / 2**20,
        )
        return True

    def dataset(self, num_parallel_calls=tf.data.AUTOTUNE):
        """All decodable images in index order: `{"image", "source_id"}` elements."""
        indices = tf.data.Dataset.range(len(self))
        return _images_only(decode_and_filter(indices, self.load, num_parallel_calls))


def drop_unreadable(elements):
    """Drops the elements that were counted as skipped (`ok` False).

    No `ignore_errors` here: every failure is caught (and counted) per element, and the
    `NoUsableImagesError` of an all-bad source must reach the consumer.
    """
    return elements.filter(lambda element: element["ok"])


def decode_and_filter(elements, load, num_parallel_calls=tf.data.AUTOTUNE):
    """Maps `load` over `elements` and drops what could not be read or decoded."""
    return drop_unreadable(
        elements.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    )


def _images_only(elements):
    return elements.map(
        lambda element: {"image": element["image"], "source_id": element["source_id"]}
    )


def _bytes_at(encoded, position, length):
    """`length` bytes of `encoded` at `position` (negative: from the end); b"" if short."""
    size = tf.strings.length(encoded)
    start = position if position >= 0 else size + position
    in_range = tf.logical_and(start >= 0, start + length <= size)
    safe_start = tf.where(in_range, start, 0)
    piece = tf.strings.substr(encoded, safe_start, tf.minimum(length, size))
    return tf.where(in_range, piece, b"")


def _little_endian_uint32(four_bytes):
    digits = tf.cast(tf.io.decode_raw(four_bytes, tf.uint8), tf.int64)
    return tf.reduce_sum(digits * tf.constant([1, 1 << 8, 1 << 16, 1 << 24], tf.int64))


_FORMAT_NAMES = ("JPEG", "PNG", "GIF", "BMP", "WebP")


def _recognised_formats(encoded):
    """Bool `[5]`: whether `encoded` starts like each of `_FORMAT_NAMES`."""
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    header6 = _bytes_at(encoded, 0, 6)
    return tf.stack(
        [
            tf.equal(_bytes_at(encoded, 0, 3), b"\xff\xd8\xff"),
            tf.equal(_bytes_at(encoded, 0, 8), _PNG_SIGNATURE),
            tf.logical_or(tf.equal(header6, b"GIF87a"), tf.equal(header6, b"GIF89a")),
            tf.logical_and(tf.equal(_bytes_at(encoded, 0, 2), b"BM"), size >= 26),
            tf.logical_and(
                tf.equal(_bytes_at(encoded, 0, 4), b"RIFF"),
                tf.equal(_bytes_at(encoded, 8, 4), b"WEBP"),
            ),
        ]
    )


def _format_name(encoded):
    """Scalar string: the format `encoded` starts like ("JPEG", ...), or "image"."""
    names = tf.boolean_mask(tf.constant(_FORMAT_NAMES), _recognised_formats(encoded))
    return tf.cond(tf.size(names) > 0, lambda: names[0], lambda: tf.constant("image"))


def encoded_image_problem(encoded):
    """Cheap structural check of encoded image bytes, in graph.

    Recognises JPEG, PNG, GIF, BMP and WebP by their magic bytes and checks that each is
    complete where that is cheap and safe: PNG ends with the IEND chunk, GIF with its
    trailer, BMP and WebP are at least as long as their headers declare. JPEG is not
    checked for its end marker: valid files may carry data after it (motion photos,
    camera trailers); truncated JPEG data is caught by the decoder instead.

    Returns:
        Scalar string: `""` when the bytes look like a complete image, else the reason.
    """
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    recognised = _recognised_formats(encoded)
    is_bmp, is_webp = recognised[3], recognised[4]

    def declared_size(offset, extra):
        # Only read the header field when the format matched (so it has those bytes).
        return _little_endian_uint32(_bytes_at(encoded, offset, 4)) + extra

    never = lambda: tf.constant(False)  # noqa: E731
    bmp_complete = tf.cond(is_bmp, lambda: declared_size(2, 0) <= size, never)
    webp_complete = tf.cond(is_webp, lambda: declared_size(4, 8) <= size, never)
    complete = tf.stack(
        [
            tf.constant(True),
            tf.equal(_bytes_at(encoded, -12, 12), _PNG_END),
            tf.equal(_bytes_at(encoded, -1, 1), b"\x3b"),
            bmp_complete,
            webp_complete,
        ]
    )
    truncated = tf.reduce_any(tf.logical_and(recognised, tf.logical_not(complete)))
    return tf.case(
        [
            (tf.equal(size, 0), lambda: tf.constant("empty file")),
            (
                tf.logical_not(tf.reduce_any(recognised)),
                lambda: tf.constant("not a JPEG, PNG, GIF, BMP or WebP image"),
            ),
            (truncated, lambda: tf.strings.join(["truncated ", _format_name(encoded), " data"])),
        ],
        default=lambda: tf.constant(""),
    )


def decode_rgb(encoded):
    """Decodes any supported image to uint8 RGB `[H, W, 3]`.

    Grayscale is replicated to three channels, alpha is dropped, palettes are expanded and
    animations give their first frame. 16-bit PNGs are rounded to 8 bits (`v / 257`)
    rather than truncated to their high byte.
    """
    is_png = tf.equal(_bytes_at(encoded, 0, 8), _PNG_SIGNATURE)

    def decode_png_rounded():
        wide = tf.cast(tf.io.decode_png(encoded, channels=3, dtype=tf.uint16), tf.float32)
        return tf.cast(tf.round(wide / 257.0), tf.uint8)

    def decode_other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(is_png, decode_png_rounded, decode_other)
    return tf.ensure_shape(image, [None, None, 3])


def _file_source(paths, description):
    path_table = tf.constant(paths, dtype=tf.string)
    return ImageSource(
        paths, lambda index: tf.io.read_file(tf.gather(path_table, index)), description
    )


def _without_icc_profile(encoded):
    """PNG bytes without their iCCP (ICC colour profile) chunks; other bytes unchanged.

    Two of the sample photos carry an sRGB profile that libpng reports on every decode
    ("iCCP: known incorrect sRGB profile" on stderr, into the progress bar). Decoding
    ignores the profile, so dropping the chunk (each chunk has its own CRC) changes no
    pixel.
    """
    if not encoded.startswith(_PNG_SIGNATURE):
        return encoded
    kept, position = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while position + 8 <= len(encoded):
        end = position + 12 + int.from_bytes(encoded[position : position + 4], "big")
        if encoded[position + 4 : position + 8] != b"iCCP":
            kept.append(encoded[position:end])
        position = end
    kept.append(encoded[position:])
    return b"".join(kept)


def samples_source():
    """The real photographs that ship inside the installed scikit-image wheel.

    The 13 files (5 MB) are read once and served from memory, without their colour
    profiles (see `_without_icc_profile`).
    """
    import skimage  # Imported lazily: only this source needs it.

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [os.path.join(folder, name) for name in SAMPLE_IMAGE_FILES]
    missing = [path for path in paths if not storage.isfile(path)]
    if missing:
        raise FileNotFoundError(f"scikit-image sample images missing: {missing}")
    contents = [_without_icc_profile(storage.read_bytes(path)) for path in paths]
    content_table = tf.constant(contents, dtype=tf.string)
    return ImageSource(
        paths,
        lambda index: tf.gather(content_table, index),
        f"the scikit-image sample images in {folder}",
    )


def list_image_files(folder):
    """Every image file below `folder` (recursive), sorted; the one image lister.

    Files are selected by extension (`IMAGE_EXTENSIONS`, any case); their content is only
    checked when read.

    Raises:
        FileNotFoundError: `folder` is not a directory.
    """
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(f"Image folder not found: {folder}")
    return sorted(
        os.path.join(root, name)
        for root, _, names in tf.io.gfile.walk(folder)
        for name in names
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


def folder_source(path):
    """Every image file below `path` (see `list_image_files`), sorted by path.

    `path` may also be a list of folders, whose images are pooled. Unreadable files are
    skipped and counted when read.
    """
    folders = [path] if isinstance(path, str) else list(path)
    paths = sorted(file for folder in folders for file in list_image_files(folder))
    return _file_source(paths, f"image folder(s) {', '.join(folders)}")


def _image_feature_name(builder):
    import tensorflow_datasets as tfds

    features = builder.info.features
    names = [name for name, feature in features.items() if isinstance(feature, tfds.features.Image)]
    if not names:
        raise ValueError(f"TFDS dataset {builder.info.name} has no image feature.")
    return "image" if "image" in names else names[0]


def tfds_source(name, split="train", data_dir=None):
    """A TFDS image dataset that is already prepared on disk (never downloads).

    The image feature is picked automatically (`"image"` if present, else the first
    `tfds.features.Image`). Datasets prepared in a format with random access
    (array_record, parquet) are read by index through `builder.as_data_source`; TFRecord
    preparations (TFDS' default) become a `TfdsRecordSource`, read as a seeded stream.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        # TFDS' own message lists every dataset it knows (hundreds of lines).
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(name.partition("/")[0], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(f"{name!r} is not a TFDS dataset{hint}") from None
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Prepare it first "
            f"(e.g. `tfds build {name}`); this library never downloads data."
        )
    if split not in builder.info.splits:
        raise ValueError(
            f"TFDS dataset {name!r} has no split {split!r}; it has {list(builder.info.splits)}."
        )
    feature = _image_feature_name(builder)
    try:
        records = builder.as_data_source(
            split=split, decoders={feature: tfds.decode.SkipDecoding()}
        )
    except NotImplementedError:
        # TFRecord preparations (TFDS' default) cannot be read by index: stream them.
        split_info = builder.info.splits[split]
        return TfdsRecordSource(
            name, split, split_info.filepaths, split_info.num_examples, feature
        )

    def read_record(index):
        return records[int(index)][feature]

    def read_encoded(index):
        encoded = tf.py_function(read_record, [index], Tout=tf.string)
        return tf.ensure_shape(encoded, [])

    source_ids = [f"tfds:{name}:{split}:{index}" for index in range(len(records))]
    return ImageSource(source_ids, read_encoded, f"TFDS dataset {name!r} split {split!r}")


class TfdsRecordSource(_CheckedDecoding):
    """A TFDS image dataset prepared as TFRecord files (TFDS' default format).

    TFRecord files have no random access, so this source is read as a stream
    (`stream`) instead of by index: each epoch visits the split's files in a seeded
    order, through a seeded shuffle buffer. Resuming at `start_index` re-reads (but does
    not decode) the records of the current epoch up to that point.
    """

    def __init__(self, name, split, filepaths, num_examples, feature, shuffle_buffer=1024):
        description = f"TFDS dataset {name!r} split {split!r} (TFRecord)"
        if not num_examples:
            raise ValueError(f"No images found in {description}.")
        super().__init__(description, num_examples)
        self.num_examples = num_examples
        self.filepaths = sorted(str(path) for path in filepaths)
        self.feature = feature
        self.shuffle_buffer = shuffle_buffer
        # Source ids name a record by file and position: stable across epochs.
        self._id_prefix = f"tfds:{name}:{split}:"

    def __len__(self):
        return self.num_examples

    def dataset(self, num_parallel_calls=tf.data.AUTOTUNE):
        """All decodable images in file order: `{"image", "source_id"}` elements."""
        return _images_only(drop_unreadable(self.stream(shuffle=False, repeat=False)))

    def stream(self, seed=0, start_index=0, shuffle=True, repeat=True, num_shards=1, shard_index=0):
        """`{"global_index", "image", "source_id", "ok"}` elements from `start_index` on.

        With `num_shards > 1` only every `num_shards`-th record (from `shard_index`) is
        decoded; every worker still reads all records.
        """
        num_examples = self.num_examples
        files = tf.constant(self.filepaths)
        spec = {self.feature: tf.io.FixedLenFeature([], tf.string)}

        names = tf.constant([os.path.basename(path) for path in self.filepaths])

        def file_records(file_index):
            name = tf.strings.join([self._id_prefix, names[file_index], ":"])
            return (
                tf.data.TFRecordDataset(files[file_index])
                .enumerate()
                .map(lambda position, record: (
                    tf.strings.join([name, tf.strings.as_string(position)]), record
                ))
            )

        def epoch_elements(epoch):
            file_order = tf.range(len(self.filepaths), dtype=tf.int64)
            if shuffle:
                file_order = ordering.epoch_permutation(len(self.filepaths), seed, epoch)
            records = tf.data.Dataset.from_tensor_slices(file_order).flat_map(file_records)
            if shuffle:
                records = records.shuffle(self.shuffle_buffer, seed=seed)
            global_indices = tf.data.Dataset.range(epoch * num_examples, (epoch + 1) * num_examples)
            skip = tf.maximum(start_index - epoch * num_examples, 0)
            return tf.data.Dataset.zip(global_indices, records).skip(skip)

        def decode(global_index, id_and_record):
            source_id, record = id_and_record
            encoded = tf.io.parse_single_example(record, spec)[self.feature]
            return {"global_index": global_index, **self.check_and_decode(encoded, source_id)}

        records = ordering.epoch_range(num_examples, start_index, repeat).flat_map(epoch_elements)
        if num_shards > 1:
            records = records.shard(num_shards, shard_index)
        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def parse_data_spec(spec):
    """Builds a source from a command-line string.

    Accepted forms: `"samples"`, `"folder:PATH"`, `"tfds:NAME"` or `"tfds:NAME:SPLIT"`.
    Several folders are pooled with commas: `"folder:PATH1,folder:PATH2"`.
    The split defaults to `train`; `NAME` may name a config or version the TFDS way
    (`"tfds:name/config:1.0.0:validation"` is not valid, `"tfds:name/config:validation"`
    is).
    """
    parts = spec.split(",")
    if len(parts) > 1:
        if not all(part.startswith("folder:") and len(part) > len("folder:") for part in parts):
            raise ValueError(
                f"Unrecognised data spec {spec!r}: only folders can be pooled "
                "('folder:PATH1,folder:PATH2')."
            )
        return folder_source([part[len("folder:") :] for part in parts])
    kind, _, rest = spec.partition(":")
    if kind == "samples" and not rest:
        return samples_source()
    if kind == "folder" and rest:
        return folder_source(rest)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return tfds_source(name, split or "train")
    raise ValueError(
        f"Unrecognised data spec {spec!r}: expected 'samples', 'folder:PATH' or "
        "'tfds:NAME[:SPLIT]'."
    )
