"""The two-view training pipeline: image source -> batched view pairs with matched points.

Order and randomness are pure functions of `seed` and of each element's position in the
source's stream, so the pipeline is reproducible and resumable:

* The source's `stream(seed, start_index, ...)` (`vader_tf.data.sources.ImageSource`)
  gives the decoded images with their *global index* `g`, the position in the stream,
  and starts at `start_index` without decoding what comes before.
* Each element's augmentation is seeded by `(seed, g)`.

`start_index` counts stream positions. Files skipped as unreadable still occupy their
position, so after skips a resume from `steps * batch_size` starts slightly early; with
clean data the two are equal.
"""

import tensorflow as tf

from vader_tf.data import correspondence, sources, views
from vader_tf.data.views import ViewConfig, render_view

# Distinct streams of randomness drawn from one element seed.
_PAIR_GEOMETRY, _VIEW1_PHOTOMETRY, _VIEW2_PHOTOMETRY, _POINTS = range(4)


def make_view_pair(image, element_seed, view_config, num_points, min_overlap, num_candidates):
    """Two augmented views of `image` and their matched points (one unbatched element)."""

    def seed_for(purpose):
        return tf.random.experimental.stateless_fold_in(element_seed, purpose)

    if min_overlap is None:  # MoCo v2: independent views; `valid` = they overlap at all.
        geometry = views.sample_independent_pair(
            seed_for(_PAIR_GEOMETRY), tf.shape(image)[:2], view_config
        )
        geometry["valid"] = correspondence.acceptable_pairs(
            geometry["box1"], geometry["box2"], geometry["flip1"], geometry["flip2"],
            view_config.image_size, 0.0,
        )
    else:
        geometry = correspondence.draw_view_pair(
            seed_for(_PAIR_GEOMETRY), tf.shape(image)[:2], view_config, min_overlap, num_candidates
        )
    points1, points2 = correspondence.sample_matched_points(
        seed_for(_POINTS), geometry, view_config.image_size, num_points
    )
    return {
        "view1": render_view(
            image, geometry["box1"], geometry["flip1"], seed_for(_VIEW1_PHOTOMETRY), view_config
        ),
        "view2": render_view(
            image, geometry["box2"], geometry["flip2"], seed_for(_VIEW2_PHOTOMETRY), view_config
        ),
        "points1": points1,
        "points2": points2,
        "valid": geometry["valid"],
    }


def two_view_dataset(
    source,
    view_config=None,
    batch_size=32,
    num_points=64,
    seed=0,
    start_index=0,
    repeat=True,
    shuffle=True,
    min_overlap=correspondence.DEFAULT_MIN_OVERLAP,
    num_candidate_pairs=correspondence.DEFAULT_NUM_CANDIDATE_PAIRS,
    num_parallel_calls=tf.data.AUTOTUNE,
    num_shards=1,
    shard_index=0,
):
    """Batched pairs of augmented views with pixel correspondences, for VADeR training.

    Args:
        source: any `sources.ImageSource` (only its `stream` is used) or a data spec
            string (see `sources.parse_data_spec`). Unreadable images are skipped and
            counted in `source.skipped`.
        view_config: `ViewConfig`; defaults to MoCo v2 at 224 x 224.
        batch_size: pairs per batch (the last partial batch is dropped).
        num_points: matched points `P` per pair.
        seed: global seed of order and augmentation.
        start_index: global index-stream position to start at (resume; see module doc).
        repeat: loop over epochs forever; else a single epoch.
        shuffle: shuffle the images of each epoch.
        min_overlap: minimum-overlap rule of `vader_tf.data.correspondence`; `None`
            draws the two views independently, as MoCo v2 does
            (`views.sample_independent_pair`); `valid` then only says if they overlap.
        num_candidate_pairs: crop pairs drawn per image to find an acceptable one.
        num_parallel_calls: parallelism of the read/decode and augmentation maps.
        num_shards, shard_index: keep only every `num_shards`-th element of the
            source's stream, starting at `shard_index` (one input pipeline per worker);
            sharding happens before any image is decoded.

    Returns:
        A prefetched `tf.data.Dataset` of dicts:
        `view1`, `view2`: float32 `[B, S, S, 3]` in [0, 255];
        `points1`, `points2`: float32 `[B, P, 2]` (y, x) grid coordinates of the stride-4
        feature maps of view1 / view2 (`vader_tf.ops.grid`), the same scene points;
        `valid`: bool `[B]`, False where the pair's overlap was too small (mask it out).
    """
    if isinstance(source, str):
        source = sources.parse_data_spec(source)
    view_config = view_config or ViewConfig()

    def augment(element):
        element_seed = tf.stack([tf.constant(seed, tf.int64), element["global_index"]])
        return make_view_pair(
            element["image"],
            element_seed,
            view_config,
            num_points,
            min_overlap,
            num_candidate_pairs,
        )

    images = source.stream(
        seed, start_index, shuffle, repeat, num_shards, shard_index, num_parallel_calls
    )
    pairs = images.map(augment, num_parallel_calls=num_parallel_calls, deterministic=True)
    return pairs.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
