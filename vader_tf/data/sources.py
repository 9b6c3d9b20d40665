"""Image sources: where pre-training images come from, behind one interface.

Every source is an `ImageSource`. The training pipeline asks a source for one thing only:
`stream(seed, start_index, ...)`, the deterministic, resumable stream of its decoded
images. Element `g` of a stream (its *global index*) is the `g`-th visit of the source,
epoch after epoch, and is a pure function of the seed, so `start_index=k` resumes
exactly where a run that consumed `k` elements stopped; images that could not be read or
decoded are dropped from the stream but keep their position. `dataset()` gives the plain
`{"image": uint8 [H, W, 3], "source_id": tf.string}` elements of one pass in source order,
and `cache_decoded` serves small sources from memory where the kind supports it.

Two kinds implement the interface:

* `IndexedImageSource`: a fixed-length collection of encoded images addressed by index
  (the scikit-image samples, image folders, TFDS datasets prepared with random access).
  Its stream shuffles and resumes on *indices* (`ordering.index_stream`) before anything
  is read or decoded. `cache_decoded(max_bytes)` decodes every image once, keeps the
  pixels in memory if their total size stays within the bound, and from then on `load`
  slices them out of memory: the stream is bitwise the same with and without the cache,
  and a bad file is named and counted once, in the decoding pass.
* `TfdsRecordSource`: a TFDS dataset prepared as TFRecord files, which have no random
  access; its stream is a seeded file order and a shuffle buffer seeded per epoch, and a
  resume re-reads (without decoding) the current epoch's records up to its position.

Reading and decoding go through `vader_tf.data.decoding.checked_decode` (format check,
size check from the header against the source's `SizeLimits`, decode to RGB,
skip-and-count of bad files). `parse_data_spec` builds a source from a `--data` string;
`list_image_files` is the one image lister of the library (it follows each symlinked
folder at most once).
"""

import abc
import contextlib
import dataclasses
import difflib
import os

import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.data import ordering
from vader_tf.data.decoding import (
    NoUsableImagesError,  # noqa: F401  (re-exported: what an all-bad source raises)
    SizeLimits,
    SkipCounter,
    checked_decode,
    without_icc_profile,
)

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


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """Which positions of a source's stream to produce, in which order.

    Attributes:
        seed: seed of the order (a pure function of it: the same seed, the same stream).
        start_index: first global index (resume): the stream equals the one from 0
            without its first `start_index` positions.
        shuffle: seeded order per epoch; else source order.
        repeat: endless epochs; else one epoch (`start_index` must lie in it).
        num_shards, shard_index: keep only every `num_shards`-th position from
            `start_index` on, from the `shard_index`-th (one input pipeline per worker),
            before decoding.
    """

    seed: int = 0
    start_index: int = 0
    shuffle: bool = True
    repeat: bool = True
    num_shards: int = 1
    shard_index: int = 0


class ImageSource(abc.ABC):
    """The interface of every image source: a seeded, resumable stream of decoded images.

    A subclass implements `__len__` and `images` (the stream of a `StreamOrder`, which
    `stream` builds from its arguments); it decodes through
    `vader_tf.data.decoding.checked_decode` with its `skipped` counter and leaves out the
    failures with `drop_unreadable`, so bad inputs are named and counted and an all-bad
    source raises `NoUsableImagesError`.

    Args:
        description: what the source is, for messages.
        num_images: number of distinct images (the bound of `NoUsableImagesError`).
        size_limits: `SizeLimits` of the images used (default `SizeLimits()`); others
            are skipped and counted before they are decoded.

    Attributes:
        description, size_limits: as given.
        skipped: the `SkipCounter` of the inputs skipped as unreadable or of a refused size.
    """

    def __init__(self, description, num_images, size_limits=None):
        if not num_images:
            raise ValueError(f"No images found in {description}.")
        self.description = description
        self.size_limits = size_limits or SizeLimits()
        self.skipped = SkipCounter(num_images, description)

    @abc.abstractmethod
    def __len__(self):
        """Images per epoch."""

    @abc.abstractmethod
    def images(self, order, num_parallel_calls=tf.data.AUTOTUNE):
        """What a source implements: the stream of `order`; `stream` describes it.

        Args:
            order: a `StreamOrder`.
            num_parallel_calls: parallelism of decoding.
        """

    def stream(
        self,
        seed=0,
        start_index=0,
        shuffle=True,
        repeat=True,
        num_shards=1,
        shard_index=0,
        num_parallel_calls=tf.data.AUTOTUNE,
    ):
        """The decoded images from global index `start_index` on, as a `tf.data.Dataset`.

        Args:
            seed, start_index, shuffle, repeat, num_shards, shard_index: the
                `StreamOrder` fields.
            num_parallel_calls: parallelism of decoding.

        Returns:
            `{"global_index": int64, "image": uint8 [H, W, 3], "source_id": string}`
            elements in increasing `global_index`; the positions of images that could not
            be read or decoded (counted in `skipped`) are left out.
        """
        order = StreamOrder(seed, start_index, shuffle, repeat, num_shards, shard_index)
        return self.images(order, num_parallel_calls)

    def dataset(self, num_parallel_calls=tf.data.AUTOTUNE):
        """One pass in source order: `{"image", "source_id"}` elements."""
        images = self.stream(shuffle=False, repeat=False, num_parallel_calls=num_parallel_calls)
        return images.map(
            lambda element: {"image": element["image"], "source_id": element["source_id"]}
        )

    def cache_decoded(self, max_bytes):
        """Serves the decoded images from memory if they fit in `max_bytes`, where the
        source supports it; returns True when it is now cached. Default: never."""
        del max_bytes
        return False

    @property
    def cached_bytes(self):
        """Size of the decoded cache in bytes, or None when the source is not cached."""
        return None

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


def drop_unreadable(elements):
    """Drops the elements that were counted as skipped (`ok` False), and `ok`.

    No `ignore_errors` here: every failure is caught (and counted) per element, and the
    `NoUsableImagesError` of an all-bad source must reach the consumer.
    """
    return elements.filter(lambda element: element["ok"]).map(
        lambda element: {key: value for key, value in element.items() if key != "ok"}
    )


class IndexedImageSource(ImageSource):
    """A fixed-length collection of encoded images addressed by index.

    Args:
        source_ids: one string per image: a file path or `"tfds:NAME:SPLIT:INDEX"`.
        read_encoded: maps a scalar int64 index tensor to the encoded image bytes (a scalar
            `tf.string`). A read that fails counts the image as skipped.
        description: what the source is, for error messages.
        size_limits: see `ImageSource`.
    """

    def __init__(self, source_ids, read_encoded, description, size_limits=None):
        super().__init__(description, len(set(source_ids)), size_limits)
        self.source_ids = list(source_ids)
        self._read_encoded = read_encoded
        self._source_id_table = tf.constant(self.source_ids, dtype=tf.string)
        self._decoded = None  # Set by `cache_decoded`.

    def __len__(self):
        return len(self.source_ids)

    def load(self, index):
        """Reads, checks and decodes image `index` (graph-compatible); the element is
        described in `decoding.checked_decode`. Served from memory after `cache_decoded`."""
        index = tf.cast(index, tf.int64)
        source_id = tf.gather(self._source_id_table, index)
        if self._decoded is not None:
            pixels, offsets, shapes, ok = self._decoded
            image = tf.reshape(pixels[offsets[index] : offsets[index + 1]], shapes[index])
            image = tf.ensure_shape(image, [None, None, 3])
            return {"image": image, "source_id": source_id, "ok": ok[index]}
        return checked_decode(
            lambda: self._read_encoded(index), source_id, self.skipped, self.size_limits
        )

    def images(self, order, num_parallel_calls=tf.data.AUTOTUNE):
        """See `ImageSource.stream`: indices are permuted per epoch by `(seed, epoch)`
        (`ordering.index_stream`), resumed and sharded before any image is read."""
        indices = ordering.index_stream(
            len(self), order.seed, order.start_index, order.shuffle, order.repeat
        )
        if order.num_shards > 1:
            indices = indices.shard(order.num_shards, order.shard_index)

        def load(global_index, index):
            return {"global_index": global_index, **self.load(index)}

        return drop_unreadable(
            indices.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
        )

    @property
    def cached_bytes(self):
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


class TfdsRecordSource(ImageSource):
    """A TFDS image dataset prepared as TFRecord files (TFDS' default format).

    TFRecord files have no random access, so the stream cannot address images by index:
    each epoch visits the split's files in a seeded order, through a shuffle buffer
    seeded by `(seed, epoch)`, so a single-file split is reordered every epoch too.
    Resuming at `start_index` re-reads (but does not decode) the records of the current
    epoch up to that point. Never cached (`cache_decoded` returns False).
    """

    def __init__(
        self, name, split, filepaths, num_examples, feature, shuffle_buffer=1024, size_limits=None
    ):
        super().__init__(
            f"TFDS dataset {name!r} split {split!r} (TFRecord)", num_examples, size_limits
        )
        self.num_examples = num_examples
        self.filepaths = sorted(str(path) for path in filepaths)
        self.feature = feature
        self.shuffle_buffer = shuffle_buffer
        # Source ids name a record by file and position: stable across epochs.
        self._id_prefix = f"tfds:{name}:{split}:"

    def __len__(self):
        return self.num_examples

    def images(self, order, num_parallel_calls=tf.data.AUTOTUNE):
        """See `ImageSource.stream`. With `num_shards > 1` only every `num_shards`-th
        record (from `shard_index`) is decoded; every worker still reads all records."""
        seed, start_index, shuffle = order.seed, order.start_index, order.shuffle
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
                with ordering.without_global_seed():
                    records = records.shuffle(
                        self.shuffle_buffer, seed=ordering.epoch_seed(seed, epoch)
                    )
            global_indices = tf.data.Dataset.range(epoch * num_examples, (epoch + 1) * num_examples)
            skip = tf.maximum(start_index - epoch * num_examples, 0)
            return tf.data.Dataset.zip(global_indices, records).skip(skip)

        def decode(global_index, id_and_record):
            source_id, record = id_and_record

            def read():
                return tf.io.parse_single_example(record, spec)[self.feature]

            decoded = checked_decode(read, source_id, self.skipped, self.size_limits)
            return {"global_index": global_index, **decoded}

        epochs = ordering.epoch_range(num_examples, start_index, order.repeat)
        records = epochs.flat_map(epoch_elements)
        if order.num_shards > 1:
            records = records.shard(order.num_shards, order.shard_index)
        return drop_unreadable(
            records.map(decode, num_parallel_calls=num_parallel_calls, deterministic=True)
        )


def _file_source(paths, description, size_limits=None):
    path_table = tf.constant(paths, dtype=tf.string)
    return IndexedImageSource(
        paths,
        lambda index: tf.io.read_file(tf.gather(path_table, index)),
        description,
        size_limits,
    )


def samples_source(size_limits=None):
    """The real photographs that ship inside the installed scikit-image wheel.

    The 13 files (5 MB) are read once and served from memory, without their colour
    profiles (see `without_icc_profile`).
    """
    import skimage  # Imported lazily: only this source needs it.

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [os.path.join(folder, name) for name in SAMPLE_IMAGE_FILES]
    missing = [path for path in paths if not storage.isfile(path)]
    if missing:
        raise FileNotFoundError(f"scikit-image sample images missing: {missing}")
    contents = [without_icc_profile(storage.read_bytes(path)) for path in paths]
    content_table = tf.constant(contents, dtype=tf.string)
    return IndexedImageSource(
        paths,
        lambda index: tf.gather(content_table, index),
        f"the scikit-image sample images in {folder}",
        size_limits,
    )


def _resolved_folder(path):
    """The identity of a folder for loop detection: its resolved path on the local
    filesystem (symlinks followed); other `tf.io.gfile` filesystems have no links."""
    return path if "://" in path else os.path.realpath(path)


def _walk_folders_once(folder, seen):
    """`(folder, [file names])` of `folder` and every folder below it, each real folder
    once: a folder whose resolved path is in `seen` (a symlink loop such as
    `ln -s . loop`, or a second link to one folder) is skipped with one warning."""
    pending = [folder]
    while pending:
        directory = pending.pop()
        resolved = _resolved_folder(directory)
        if resolved in seen:
            logging.warning(
                "Not listing %s: it leads to %s, which is already listed (a symlink loop or "
                "a second link to one folder).", directory, resolved,
            )
            continue
        seen.add(resolved)
        files, subfolders = [], []
        for entry in sorted(tf.io.gfile.listdir(directory)):
            path = os.path.join(directory, entry.rstrip("/"))
            if tf.io.gfile.isdir(path):
                subfolders.append(path)
            else:
                files.append(entry)
        yield directory, files
        pending.extend(reversed(subfolders))  # Depth first, in sorted order.


def list_image_files(folder, seen=None):
    """Every image file below `folder` (recursive), sorted; the one image lister.

    Files are selected by extension (`IMAGE_EXTENSIONS`, any case); their content is only
    checked when read. Symlinked folders are followed, but each folder (by resolved path)
    is listed at most once: a link back up the tree (`ln -s . loop`) or a second link to
    a listed folder is named in one warning and skipped, instead of listing its files
    again and again.

    Args:
        folder: a local or `tf.io.gfile` path.
        seen: optional set of resolved folders already listed (shared across calls to
            list several folders without duplicates); updated.

    Raises:
        FileNotFoundError: `folder` is not a directory.
    """
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(f"Image folder not found: {folder}")
    return sorted(
        os.path.join(directory, name)
        for directory, names in _walk_folders_once(folder, set() if seen is None else seen)
        for name in names
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


def folder_source(path, size_limits=None):
    """Every image file below `path` (see `list_image_files`), sorted by path.

    `path` may also be a list of folders, whose images are pooled (a folder reached from
    two of them is listed once). Unreadable files and images outside `size_limits` (see
    `ImageSource`) are skipped and counted when read.
    """
    folders = [path] if isinstance(path, str) else list(path)
    seen = set()
    paths = sorted(file for folder in folders for file in list_image_files(folder, seen))
    return _file_source(paths, f"image folder(s) {', '.join(folders)}", size_limits)


def _image_feature_name(builder):
    import tensorflow_datasets as tfds

    features = builder.info.features
    names = [name for name, feature in features.items() if isinstance(feature, tfds.features.Image)]
    if not names:
        raise ValueError(f"TFDS dataset {builder.info.name} has no image feature.")
    return "image" if "image" in names else names[0]


def tfds_source(name, split="train", data_dir=None, size_limits=None):
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
            name, split, split_info.filepaths, split_info.num_examples, feature,
            size_limits=size_limits,
        )

    def read_record(index):
        return records[int(index)][feature]

    def read_encoded(index):
        encoded = tf.py_function(read_record, [index], Tout=tf.string)
        return tf.ensure_shape(encoded, [])

    source_ids = [f"tfds:{name}:{split}:{index}" for index in range(len(records))]
    return IndexedImageSource(
        source_ids, read_encoded, f"TFDS dataset {name!r} split {split!r}", size_limits
    )


def parse_data_spec(spec, size_limits=None):
    """Builds a source from a command-line string, with `size_limits` (see `ImageSource`).

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
        return folder_source([part[len("folder:") :] for part in parts], size_limits)
    kind, _, rest = spec.partition(":")
    if kind == "samples" and not rest:
        return samples_source(size_limits)
    if kind == "folder" and rest:
        return folder_source(rest, size_limits)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return tfds_source(name, split or "train", size_limits=size_limits)
    raise ValueError(
        f"Unrecognised data spec {spec!r}: expected 'samples', 'folder:PATH' or "
        "'tfds:NAME[:SPLIT]'."
    )
