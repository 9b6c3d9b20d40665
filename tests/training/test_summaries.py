"""TensorBoard pictures of the features: what is written, when, and that training does
not notice them."""

import numpy as np
import pytest
import tensorflow as tf

import vader_tf
from tests.training import reference
from tests.training.helpers import (
    build_small_model,
    run_steps,
    small_config,
    synthetic_batch,
    two_replicas,
    write_smooth_photos,
)
from vader_tf.run_dir import RunDir
from vader_tf.training import last_step, summaries
from vader_tf.training.pretrain import PretrainConfig, pretrain


def read_summaries(model_dir):
    """`{(tag, step): value}` of a run's event files: images as uint8 arrays
    `[N, H, W, 3]`, histograms as their bucket tensors, scalars as floats."""
    found = {}
    for path in RunDir(model_dir).event_files():
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "images":
                    images = [tf.image.decode_png(png).numpy() for png in tensor[2:]]
                    found[(value.tag, event.step)] = np.stack(images)
                else:
                    found[(value.tag, event.step)] = tensor
    return found


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_smooth_photos(folder, 4)
    return str(folder)


@pytest.fixture(scope="module")
def runs(photos_dir, tmp_path_factory):
    """The same 4-step run with pictures (default cadence, on ram://) and without."""
    with_pictures = small_config("ram://summaries_test/with", photos_dir)
    without = small_config(tmp_path_factory.mktemp("without"), photos_dir, image_summary_every=0)
    pretrain(with_pictures)
    pretrain(without)
    return with_pictures.model_dir, without.model_dir


def test_pictures_at_each_checkpoint_show_the_served_features(runs, photos_dir):
    model_dir, _ = runs
    found = read_summaries(model_dir)
    tags = {"pictures/photo", "pictures/features_pca", "pictures/similarity"}
    for step in (2, 4):  # checkpoint_every=2, train_steps=4
        assert tags <= {tag for tag, s in found if s == step}
        assert {("similarity/positive", step), ("similarity/negative", step)} <= set(found)
    assert not [tag for tag, s in found if s in (1, 3) and tag.startswith("pictures/")]

    photos = found[("pictures/photo", 4)]
    assert photos.shape == (2, 64, 64, 3) and photos.std() > 1
    # Oracle: the run's final encoder on the photos the pictures show, cosine
    # similarities to the centre of the first photo re-derived in NumPy.
    encoder = vader_tf.load_encoder(model_dir)
    features = np.asarray(encoder(photos.astype("float32"), training=False))
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    want = (unit @ unit[0, 8, 8] + 1) / 2 * 255
    got = found[("pictures/similarity", 4)]
    assert got.shape == (2, 16, 16, 3)
    outside_box = np.ones((2, 16, 16), bool)
    outside_box[0, 7:10, 7:10] = False
    np.testing.assert_allclose(got[..., 0][outside_box], want[outside_box], atol=1.01)
    assert got[0, 8, 8, 0] == 255 and got[0, 7, 7, 0] == 0  # the point and its box

    pca = found[("pictures/features_pca", 4)]
    assert pca.shape == (2, 16, 16, 3) and pca.std() > 10


def test_pictures_change_no_checkpoint(runs):
    with_pictures, without = runs
    for step in (2, 4):
        # (The reader itself: tf.train.load_checkpoint takes a ram:// prefix for a folder.)
        a = tf.compat.v1.train.NewCheckpointReader(f"{with_pictures}/checkpoints/ckpt-{step}")
        b = tf.compat.v1.train.NewCheckpointReader(f"{without}/checkpoints/ckpt-{step}")
        names = sorted(a.get_variable_to_shape_map())
        assert names == sorted(b.get_variable_to_shape_map())
        for name in names:
            np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)
    assert not [tag for tag, _ in read_summaries(without) if tag.startswith(("pictures/", "similarity/"))]
    assert ("loss", 4) in read_summaries(without)


def test_off_reads_nothing_and_cadence():
    assert summaries.ImageSummaries.from_source(None, 64, 0) is None
    pictures = summaries.ImageSummaries(np.zeros((2, 64, 64, 3), np.uint8), every=5)
    # Chunks of 3 steps: crossing 5 (at 6), 10 (at 12), 15 (at 15), and the last chunk.
    assert [s for s in range(3, 16, 3) if pictures.due(s, 3, last=False)] == [6, 12, 15]
    assert pictures.due(14, 2, last=True)


def test_image_summary_every_is_validated_and_resumable(tmp_path):
    with pytest.raises(ValueError, match="image_summary_every must be at least 0"):
        PretrainConfig(model_dir=str(tmp_path), image_summary_every=-1).validate()
    from vader_tf.training.pretrain import RESUMABLE_FIELDS

    assert "image_summary_every" in RESUMABLE_FIELDS


def test_pca_rgb_colours_follow_the_main_component():
    # Features varying along one direction: the first component orders the red channel.
    ramp = np.linspace(-1, 1, 16)
    features = np.zeros((1, 4, 4, 8))
    features[..., 3] = ramp.reshape(1, 4, 4)
    features[..., 5] = 0.01 * np.random.default_rng(0).normal(size=(1, 4, 4))
    red = np.asarray(summaries.pca_rgb(features))[..., 0].ravel().astype(int)
    assert (np.diff(red) >= 0).all() and red[0] == 0 and red[-1] == 255


def test_pca_rgb_of_partly_non_finite_features_is_a_picture_of_the_rest():
    # Seen in a float16 run at 32 px: the served tap overflowed in inference mode at the
    # first checkpoint and the eigendecomposition stopped the run. The finite channel
    # still orders the red channel; the non-finite ones count as 0.
    ramp = np.linspace(-1, 1, 16)
    features = np.zeros((1, 4, 4, 8), np.float32)
    features[..., 3] = ramp.reshape(1, 4, 4)
    features[..., 6] = np.inf
    features[..., 7] = np.nan
    red = np.asarray(summaries.pca_rgb(features))[..., 0].ravel().astype(int)
    assert (np.diff(red) >= 0).all() and red[0] == 0 and red[-1] == 255


def test_rendered_grid_is_read_back_from_the_event_files(runs):
    model_dir, _ = runs
    pictures, histograms = summaries.read_pictures(RunDir(model_dir).event_files())
    assert sorted(pictures) == [2, 4] and sorted(histograms) == [2, 4]
    found = read_summaries(model_dir)
    for tag in summaries.PICTURE_TAGS:
        np.testing.assert_array_equal(pictures[4][tag], found[(tag, 4)])
    grid = summaries.picture_grid(pictures[4], scale=2)
    assert grid.shape == (2 * (2 * 64 + 4), 2 * (3 * 64 + 8), 3)
    # Top-left: the first photo, enlarged; right of it (after the gap), the PCA colours
    # of its first feature cell, repeated over a 4 x 4 block (x 2).
    np.testing.assert_array_equal(grid[:128:2, :128:2], pictures[4]["pictures/photo"][0])
    np.testing.assert_array_equal(grid[0, 136], pictures[4]["pictures/features_pca"][0, 0, 0])
    assert (grid[:, 128:136] == 255).all()


def _evenly_spaced(count, size):
    """NumPy statement of `last_step`'s sampling rule: row floor(i * count / size)."""
    rows = np.arange(size) * max(count, size) // size
    return rows[rows < count]


def _record_one_step(model, batch):
    """Runs one step eagerly and returns, per term, what the loss compared: the rows
    `contrastive_rows` returned (queries, positives, weights) and the queue before."""
    spied = []
    real_rows = model.contrastive_rows

    def spy(*args):
        terms = real_rows(*args)
        spied.extend(terms)
        return terms

    queues = [model._queue_of(i)[0].numpy().copy() for i in range(len(model.terms))]
    model.contrastive_rows = spy
    try:
        model.train_step({k: tf.constant(v) for k, v in batch.items()})
    finally:
        del model.contrastive_rows
    return [
        (t.queries.numpy(), t.positives.numpy(), t.weights.numpy(), queue)
        for t, queue in zip(spied, queues)
    ]


def _expected_sample(queries, positives, weights, queue):
    """The histograms' values re-derived in NumPy from the rows the loss compared."""
    positive = np.sum(queries * positives, axis=1)
    rows = _evenly_spaced(len(queries), last_step.NEGATIVE_ROWS)
    keys = _evenly_spaced(len(queue), last_step.NEGATIVE_KEYS)
    negative = (queries[rows] @ queue[keys].T)[weights[rows] > 0]
    return positive[weights > 0], negative.ravel()


@pytest.mark.parametrize(
    "method, symmetric_loss",
    [("vader", True), ("moco", False), ("densecl", True)],
    ids=["vader", "moco_one_direction", "densecl"],
)
def test_histograms_are_the_last_steps_similarities(tmp_path, method, symmetric_loss):
    model = build_small_model(method, queue_size=128, tiny=True, symmetric_loss=symmetric_loss)
    pictures = summaries.ImageSummaries(np.zeros((2, 64, 64, 3), np.uint8), every=1)
    pictures.attach(model)
    assert not [v for v in model.weights if "last_step" in v.name]  # Outside the checkpoint.
    _record_one_step(model, synthetic_batch(4, seed=1))
    # Pair 2 invalid: VADeR's rows of it do not count and must not be shown.
    terms = _record_one_step(model, synthetic_batch(4, seed=2, invalid=(2,)))
    writer = tf.summary.create_file_writer(str(tmp_path))
    pictures.write(model, 7, writer)
    writer.flush()
    _, histograms = summaries.read_pictures(tf.io.gfile.glob(f"{tmp_path}/events.*"))

    names = [t.name for t in model.terms]
    assert len(terms) == len(names)
    recorded = model.last_step.values()
    for name, term in zip(names, terms):
        prefix = f"{name}_" if len(names) > 1 else ""
        want_positive, want_negative = _expected_sample(*term)
        if method == "vader":
            assert len(want_positive) == 3 * 8 * 2  # 3 valid pairs x 8 points x 2 directions
        got_positive, got_negative = (v.numpy() for v in recorded[name if prefix else ""])
        # All rows: fewer than the 256 kept (in the loss's order), the negatives sampled.
        np.testing.assert_allclose(got_positive, want_positive, atol=2e-5)
        np.testing.assert_allclose(got_negative, want_negative, atol=2e-5)
        for kind, want in (("positive", want_positive), ("negative", want_negative)):
            buckets = histograms[7][f"similarity/{prefix}{kind}"]
            assert buckets[:, 2].sum() == len(want)
            np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], [want.min(), want.max()], atol=2e-5)
            counts, _ = np.histogram(want, bins=len(buckets), range=(want.min(), want.max()))
            assert np.abs(buckets[:, 2] - counts).sum() <= 2, (kind, buckets[:, 2], counts)


def test_two_replicas_histograms_show_the_first_replicas_rows(tmp_path):
    # Replica 0 holds pairs 0-1 of the global batch: its rows, re-derived from the
    # networks' outputs on that half (BN per replica, as in the step), are the sample.
    batch = synthetic_batch(4, seed=3, invalid=(1,))
    twin = build_small_model("vader", queue_size=48, tiny=True)
    half = slice(0, 2)
    positive = []
    for (qv, qp), (kv, kp) in ((("view1", "points1"), ("view2", "points2")), (("view2", "points2"), ("view1", "points1"))):
        queries = twin.query_model(batch[qv][half], training=True).numpy()
        keys = twin.key_model(batch[kv][half], training=True).numpy()
        for image in (0,):  # Pair 1 is invalid.
            q = reference.unit(reference.bilinear(queries[image], batch[qp][image]))
            k = reference.unit(reference.bilinear(keys[image], batch[kp][image]))
            positive.extend(np.sum(q * k, axis=1))

    strategy = two_replicas()
    pictures = summaries.ImageSummaries(np.zeros((2, 64, 64, 3), np.uint8), every=1)
    with strategy.scope():
        model = build_small_model("vader", queue_size=48, tiny=True)
        pictures.attach(model)
    run_steps(model, strategy, [batch])
    writer = tf.summary.create_file_writer(str(tmp_path))
    pictures.write(model, 1, writer)
    writer.flush()
    _, histograms = summaries.read_pictures(tf.io.gfile.glob(f"{tmp_path}/events.*"))
    got, _ = model.last_step.values()[""]
    np.testing.assert_allclose(got.numpy(), positive, atol=2e-5)
    assert histograms[1]["similarity/positive"][:, 2].sum() == 16
