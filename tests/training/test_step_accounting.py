"""float16 step accounting (issue 19, item 1): a step whose update the loss-scaling
optimiser skips (non-finite gradients) changes nothing but the loss scale, and the loop's
step, checkpoint names, data position and schedules follow the applied updates.

Non-finite gradients are injected by a batch whose images are NaN (the loss and every
gradient become NaN), chosen by its index in the global stream. The oracle is the same
run with that batch left out of the stream by design (read, never trained on).
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.training import helpers
from tests.training.helpers import build_small_model, run_steps, synthetic_batch, two_replicas
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.training import loop
from vader_tf.training import pretrain as pretrain_lib
from vader_tf.training.pretrain import dtype_policy, pretrain


def _poisoned(batch, images=None):
    """`batch` with NaN in view 1 of `images` (all by default)."""
    view1 = np.array(batch["view1"])
    view1[slice(None) if images is None else list(images)] = np.nan
    return {**batch, "view1": view1}


def _state(model):
    """Every variable of the model and its optimiser, by path."""
    variables = list(model.weights) + list(model.optimizer.variables)
    return {v.path: np.array(v.numpy()) for v in variables}


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_skipped_step_changes_nothing_but_the_loss_scale(replicas):
    strategy = two_replicas() if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope(), dtype_policy("mixed_float16"):
        # Cosine momentum: the schedule reads the step, so a miscounted step shows.
        # The tiny backbone: what is checked is which variables a step changes.
        model = build_small_model(
            "vader", bn_groups=2, shuffle_bn=True, momentum_schedule="cosine", total_steps=10,
            tiny=True,
        )
    assert model.skips_non_finite_steps
    # A clean step first (float16 may overflow at the initial loss scale, 2^15: both
    # views' gradients add up in one call; that real skip halves the scale and the next
    # clean batch trains).
    for seed in (1, 11, 21):
        run_steps(model, strategy, [synthetic_batch(4, seed=seed)])
        if int(model.optimizer.iterations.numpy()) == 1:
            break
    skipped_before = int(model.skipped_steps.numpy())
    before = _state(model)
    # On 2 replicas only the second replica's images are NaN: Keras alone would follow
    # the first replica's finite gradients and apply the all-reduced NaN ones.
    (metrics,) = run_steps(model, strategy, [_poisoned(synthetic_batch(4, seed=2), [3])])
    after = _state(model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    scale = model.optimizer.dynamic_scale.path
    # (The loss scale's step counter resets to 0 on a skip: unchanged if it was 0.)
    assert {scale, model.skipped_steps.path} <= changed
    assert changed <= {scale, model.optimizer.step_counter.path, model.skipped_steps.path}
    assert after[scale] == before[scale] / 2
    assert int(model.skipped_steps.numpy()) == skipped_before + 1
    assert int(model.optimizer.iterations.numpy()) == 1
    # No rows of the skipped step in the metrics: no NaN for the loop's loss check.
    assert metrics["loss"] == 0.0
    # The next clean step trains as usual.
    run_steps(model, strategy, [synthetic_batch(4, seed=3)])
    assert int(model.optimizer.iterations.numpy()) == 2
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    helpers.write_smooth_photos(folder, 6)
    return str(folder)


def _config(model_dir, photos, **overrides):
    # 32 px views, the smallest the backbone takes: float16 is emulated on the CPU, and
    # what is checked here is step accounting, not features.
    settings = dict(mixed_precision="mixed_float16", deterministic=True, image_size=32)
    return helpers.small_config(model_dir, photos, **{**settings, **overrides})


def _stream_with(monkeypatch, bad_batch, drop):
    """Makes global batch `bad_batch` of the training stream NaN (`drop=False`) or leaves
    it out (`drop=True`: read from the stream, never trained on). One replica."""
    real = pretrain_lib.training_dataset

    def training_dataset(config, source, batch_size, start_index=0, **kwargs):
        dataset = real(config, source, batch_size, start_index=start_index, **kwargs)
        first = start_index // batch_size
        dataset = dataset.enumerate(start=first)
        if drop:
            return dataset.filter(lambda i, _: i != bad_batch).map(lambda _, b: b)
        return dataset.map(
            lambda i, b: {
                **b,
                "view1": tf.where(i == bad_batch, float("nan"), b["view1"]),
            }
        )

    monkeypatch.setattr(pretrain_lib, "training_dataset", training_dataset)


def _checkpoints(model_dir):
    return sorted(
        os.path.basename(c)
        for c in glob.glob(os.path.join(str(model_dir), "checkpoints", "ckpt-*.index"))
    )


def _weights(model_dir):
    return [w.numpy() for w in load_encoder(str(model_dir)).weights]


def _checkpoint_values(model_dir, name):
    path = RunDir(str(model_dir)).latest_checkpoint()
    return {
        key: tf.train.load_variable(path, key)
        for key, _ in tf.train.list_variables(path)
        if name in key and "OPTIMIZER_SLOT" not in key
    }


class Crash(Exception):
    pass


# The stream's batch with NaN images. (Batch 0 overflows float16 at the initial loss scale
# 2^15 and is skipped in every run: a real skip, which the runs share.)
BAD_BATCH = 2


def _pretrain(model_dir, photos, monkeypatch, drop, crash_after_save=False):
    with monkeypatch.context() as patch:
        _stream_with(patch, bad_batch=BAD_BATCH, drop=drop)
        if crash_after_save:
            real_save = tf.train.CheckpointManager.save

            def save_then_crash(manager, *args, **kwargs):
                raise Crash(real_save(manager, *args, **kwargs))

            patch.setattr(tf.train.CheckpointManager, "save", save_then_crash)
        # 64 px: at 32 px some float16 gradients underflow, and the two loss scales no
        # longer give the same updates (the oracle below).
        return pretrain(_config(model_dir, photos, image_size=64))


def test_a_skipped_batch_is_read_once_counted_apart_and_resumed_exactly(
    tmp_path, photo_folder, monkeypatch
):
    # Batch 2 of the stream has NaN images: its step is skipped, so the run reads one
    # batch more for its 4 updates, exactly as a run whose stream leaves batch 2 out.
    designed, by_design = _pretrain(tmp_path / "by_design", photo_folder, monkeypatch, drop=True)
    model, skipped = _pretrain(tmp_path / "skipped", photo_folder, monkeypatch, drop=False)

    assert [h["step"] for h in skipped] == [h["step"] for h in by_design] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) for h in skipped)
    assert _checkpoints(tmp_path / "skipped") == _checkpoints(tmp_path / "by_design") == [
        "ckpt-2.index", "ckpt-4.index"
    ]
    assert int(model.optimizer.iterations.numpy()) == 4
    # The stream position: applied + skipped batches, one more than by design.
    skips = int(designed.skipped_steps.numpy())
    assert int(model.skipped_steps.numpy()) == skips + 1
    (stored,) = _checkpoint_values(tmp_path / "skipped", "skipped_steps").values()
    assert stored == skips + 1
    # The history reports every skip (a call that applied nothing reports with the next).
    assert sum(h["skipped_steps"] for h in skipped) == skips + 1
    assert sum(h["skipped_steps"] for h in by_design) == skips
    # Same updates on the same batches; only the loss scale differs (halved once), and
    # scaling by a power of two is exact in float16 unless a gradient underflows.
    for a, b in zip(_weights(tmp_path / "skipped"), _weights(tmp_path / "by_design")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_queue(tmp_path / "skipped"), _queue(tmp_path / "by_design")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # Killed after ckpt-2 (the NaN batch read and skipped before it) and resumed: the
    # stream must restart after the batches read, not at 2 x batch_size images.
    with pytest.raises(Crash, match="ckpt-2"):
        _pretrain(tmp_path / "resumed", photo_folder, monkeypatch, False, crash_after_save=True)
    _, resumed = _pretrain(tmp_path / "resumed", photo_folder, monkeypatch, drop=False)
    assert [h["step"] for h in resumed] == [3, 4]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in skipped[2:]]
    for a, b in zip(_weights(tmp_path / "skipped"), _weights(tmp_path / "resumed")):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_queue(tmp_path / "skipped"), _queue(tmp_path / "resumed")):
        np.testing.assert_array_equal(a, b)


def _queue(model_dir):
    """The model's queue and pointer in the newest checkpoint."""
    values = _checkpoint_values(model_dir, "model/queue")
    return [values[k] for k in sorted(values)]


def test_float16_gradients_non_finite_even_unscaled_stop_the_run(
    tmp_path, photo_folder, monkeypatch
):
    # Every batch NaN: each step is skipped and halves the loss scale (2^15 at first);
    # the run stops once it falls below 1 instead of skipping forever.
    with monkeypatch.context() as patch:
        real = pretrain_lib.training_dataset
        patch.setattr(
            pretrain_lib,
            "training_dataset",
            lambda *a, **k: real(*a, **k).map(lambda b: _poisoned_tensors(b)),
        )
        with pytest.raises(loop.NonFiniteLossError, match="loss scale down to 0.5"):
            pretrain(_config(tmp_path, photo_folder, log_every=4, checkpoint_every=4))
    assert RunDir(str(tmp_path)).latest_checkpoint() is None


def _poisoned_tensors(batch):
    return {**batch, "view1": batch["view1"] * float("nan")}

