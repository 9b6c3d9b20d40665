"""Image sources: where pre-training images come from, and how bad files are survived.

Every source is an `ImageSource`: a fixed-length, index-addressable collection of encoded
images. Addressing by index lets the two-view pipeline shuffle and resume on *indices*
before anything is read or decoded. The exception is a TFDS dataset prepared as TFRecord
files, which has no random access: `TfdsRecordSource` is read as a seeded stream. `ImageSource.dataset()` gives the plain
`tf.data.Dataset` of `{"image": uint8 [H, W, 3], "source_id": tf.string}` in index order.

Bad input (empty, truncated, corrupt or non-image files) is skipped, never fatal. A cheap
in-graph structural check (magic bytes and end-of-stream marker per format) catches almost
all of it; a failing element calls a rare `tf.py_function` that logs the source id with the
reason and records it in the source's `SkipCounter`. Decode errors that slip past the check
are dropped by `tf.data.Dataset.ignore_errors` as a last safety net (those are not counted).
"""

import difflib
import os
import threading

import tensorflow as tf
from absl import logging

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


class SkipCounter:
    """Thread-safe record of the inputs a pipeline skipped as unreadable.

    Attributes:
        count: number of skip events (a bad file read in several epochs counts each time).
        files: `{source_id: reason}` for every distinct skipped input.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.files = {}

    def record(self, source_id, reason):
        """Counts one skip; logs a warning the first time `source_id` is skipped."""
        with self._lock:
            self.count += 1
            first_time = source_id not in self.files
            self.files[source_id] = reason
        if first_time:
            logging.warning("Skipping unreadable image %s: %s", source_id, reason)


class _CheckedDecoding:
    """What every source shares: a description, a `SkipCounter`, the checked decode."""

    def __init__(self, description):
        self.description = description
        self.skipped = SkipCounter()

    def check_and_decode(self, encoded, source_id):
        """Decodes `encoded` bytes, or counts `source_id` as skipped.

        Returns:
            `{"image": uint8 [H, W, 3], "source_id": string, "ok": bool}`. When `ok` is
            False the input failed the structural check (and was counted as skipped) and
            `image` is a 1x1 placeholder: filter it out.
        """
        problem = encoded_image_problem(encoded)
        ok = tf.equal(problem, "")

        def record_skip():
            tf.py_function(self._record_skip, [source_id, problem], Tout=[])
            return tf.zeros([1, 1, 3], tf.uint8)

        image = tf.cond(ok, lambda: decode_rgb(encoded), record_skip)
        return {"image": image, "source_id": source_id, "ok": ok}

    def _record_skip(self, source_id, problem):
        self.skipped.record(source_id.numpy().decode(), problem.numpy().decode())


class ImageSource(_CheckedDecoding):
    """A fixed-length collection of encoded images addressed by index.

    Args:
        source_ids: one string per image: a file path or `"tfds:NAME:SPLIT:INDEX"`.
        read_encoded: maps a scalar int64 index tensor to the encoded image bytes (a scalar
            `tf.string`). Reading must not raise for unreadable content: return the bytes.
        description: what the source is, for error messages.
    """

    def __init__(self, source_ids, read_encoded, description):
        if not source_ids:
            raise ValueError(f"No images found in {description}.")
        super().__init__(description)
        self.source_ids = list(source_ids)
        self._read_encoded = read_encoded
        self._source_id_table = tf.constant(self.source_ids, dtype=tf.string)

    def __len__(self):
        return len(self.source_ids)

    def load(self, index):
        """Reads, checks and decodes image `index` (graph-compatible); the element is
        described in `check_and_decode`."""
        index = tf.cast(index, tf.int64)
        source_id = tf.gather(self._source_id_table, index)
        return self.check_and_decode(self._read_encoded(index), source_id)

    def dataset(self, num_parallel_calls=tf.data.AUTOTUNE):
        """All decodable images in index order: `{"image", "source_id"}` elements."""
        indices = tf.data.Dataset.range(len(self))
        return _images_only(decode_and_filter(indices, self.load, num_parallel_calls))


def drop_unreadable(elements):
    """Drops elements that failed the structural check or could not be decoded."""
    return elements.filter(lambda element: element["ok"]).ignore_errors()


def decode_and_filter(elements, load, num_parallel_calls=tf.data.AUTOTUNE):
    """Maps `load` over `elements` and drops what failed the check or could not decode."""
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


def encoded_image_problem(encoded):
    """Cheap structural check of encoded image bytes, in graph.

    Recognises JPEG, PNG, GIF, BMP and WebP by their magic bytes and checks that each is
    complete (JPEG ends with the EOI marker, PNG with the IEND chunk, GIF with its
    trailer, BMP and WebP are at least as long as their headers declare).

    Returns:
        Scalar string: `""` when the bytes look like a complete image, else the reason.
    """
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    is_jpeg = tf.equal(_bytes_at(encoded, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(_bytes_at(encoded, 0, 8), _PNG_SIGNATURE)
    header6 = _bytes_at(encoded, 0, 6)
    is_gif = tf.logical_or(tf.equal(header6, b"GIF87a"), tf.equal(header6, b"GIF89a"))
    is_bmp = tf.logical_and(tf.equal(_bytes_at(encoded, 0, 2), b"BM"), size >= 26)
    is_webp = tf.logical_and(
        tf.equal(_bytes_at(encoded, 0, 4), b"RIFF"), tf.equal(_bytes_at(encoded, 8, 4), b"WEBP")
    )

    def declared_size(offset, extra):
        # Only read the header field when the format matched (so it has those bytes).
        return _little_endian_uint32(_bytes_at(encoded, offset, 4)) + extra

    never = lambda: tf.constant(False)  # noqa: E731
    bmp_complete = tf.cond(is_bmp, lambda: declared_size(2, 0) <= size, never)
    webp_complete = tf.cond(is_webp, lambda: declared_size(4, 8) <= size, never)
    complete = tf.stack(
        [
            tf.equal(_bytes_at(encoded, -2, 2), b"\xff\xd9"),
            tf.equal(_bytes_at(encoded, -12, 12), _PNG_END),
            tf.equal(_bytes_at(encoded, -1, 1), b"\x3b"),
            bmp_complete,
            webp_complete,
        ]
    )
    recognised = tf.stack([is_jpeg, is_png, is_gif, is_bmp, is_webp])
    format_names = tf.constant(["JPEG", "PNG", "GIF", "BMP", "WebP"])
    truncated = tf.reduce_any(tf.logical_and(recognised, tf.logical_not(complete)))
    format_name = tf.strings.reduce_join(tf.boolean_mask(format_names, recognised))
    return tf.case(
        [
            (tf.equal(size, 0), lambda: tf.constant("empty file")),
            (
                tf.logical_not(tf.reduce_any(recognised)),
                lambda: tf.constant("not a JPEG, PNG, GIF, BMP or WebP image"),
            ),
            (truncated, lambda: tf.strings.join(["truncated ", format_name, " data"])),
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
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"scikit-image sample images missing: {missing}")
    contents = []
    for path in paths:
        with open(path, "rb") as f:
            contents.append(_without_icc_profile(f.read()))
    content_table = tf.constant(contents, dtype=tf.string)
    return ImageSource(
        paths,
        lambda index: tf.gather(content_table, index),
        f"the scikit-image sample images in {folder}",
    )


def folder_source(path):
    """Every image file below `path` (recursive), sorted by path for determinism.

    `path` may also be a list of folders, whose images are pooled. Files are selected by
    extension (jpg, jpeg, png, bmp, gif, webp; any case). Their content is checked when
    read: unreadable files are skipped and counted.
    """
    folders = [path] if isinstance(path, str) else list(path)
    paths = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Image folder not found: {folder}")
        for root, _, names in os.walk(folder):
            paths.extend(
                os.path.join(root, name)
                for name in names
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            )
    return _file_source(sorted(paths), f"image folder(s) {', '.join(folders)}")


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
        super().__init__(description)
        self.num_examples = num_examples
        self.filepaths = sorted(str(path) for path in filepaths)
        self.feature = feature
        self.shuffle_buffer = shuffle_buffer
        self._id_prefix = f"tfds:{name}:{split}:element-"

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

        def epoch_elements(epoch):
            epoch_files = files
            if shuffle:
                order = ordering.epoch_permutation(len(self.filepaths), seed, epoch)
                epoch_files = tf.gather(files, order)
            records = tf.data.TFRecordDataset(epoch_files)
            if shuffle:
                records = records.shuffle(self.shuffle_buffer, seed=seed)
            global_indices = tf.data.Dataset.range(epoch * num_examples, (epoch + 1) * num_examples)
            skip = tf.maximum(start_index - epoch * num_examples, 0)
            return tf.data.Dataset.zip(global_indices, records).skip(skip)

        def decode(global_index, record):
            encoded = tf.io.parse_single_example(record, spec)[self.feature]
            source_id = tf.strings.join([self._id_prefix, tf.strings.as_string(global_index)])
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
