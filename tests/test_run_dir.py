"""`RunDir` answers from the files of a run directory, and `storage` writes through gfile."""

import uuid

import pytest
import tensorflow as tf

from vader_tf import storage
from vader_tf.run_dir import RunDir


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    path = str(tmp_path) if request.param == "local" else f"ram://run-dir-{uuid.uuid4().hex}"
    yield path
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def _touch(path):
    storage.makedirs(path.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("")


def test_empty_run_dir(root):
    run = RunDir(f"{root}/run")
    assert run.latest_checkpoint() is None
    assert run.latest_step() == 0
    assert run.event_files() == []
    assert run.read_run_config() is None
    assert not run.looks_like_run()


def test_latest_step_and_event_order(root):
    run = RunDir(f"{root}/run")
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    manager = run.checkpoint_manager(checkpoint, max_to_keep=2)
    for step in (9, 10):
        manager.save(checkpoint_number=step)
    assert run.latest_step() == 10
    assert run.latest_checkpoint() == f"{root}/run/checkpoints/ckpt-10"
    # Writer creation times 999 s and 1000 s: the older file comes first, although
    # "1000" sorts before "999" as text.
    names = ["events.out.tfevents.1000.host.7.0.v2", "events.out.tfevents.999.host.5.0.v2"]
    for name in names:
        _touch(f"{root}/run/tensorboard/{name}")
    assert [path.rsplit("/", 1)[1] for path in run.event_files()] == names[::-1]
    assert run.looks_like_run()


def test_run_config_round_trip_leaves_no_temporary(root):
    run = RunDir(f"{root}/run")
    run.write_run_config({"train_steps": 3, "method": "vader"})
    run.write_run_config({"train_steps": 4, "method": "vader"})
    assert run.read_run_config() == {"train_steps": 4, "method": "vader"}
    assert [name.rstrip("/") for name in tf.io.gfile.listdir(run.path)] == [RunDir.RUN_CONFIG]


def test_an_encoder_config_without_grid_warns_that_old_decoders_differ(tmp_path, monkeypatch):
    # v0.1's decoder upsampled with half-pixel centres; its weights load into today's
    # decoder silently (same variables), so a config from before the grid declaration
    # must say so.
    from vader_tf import run_dir
    from vader_tf.models import build_encoder

    warnings = []
    monkeypatch.setattr(run_dir.logging, "warning", lambda *args: warnings.append(args))
    run = RunDir(str(tmp_path))
    run.save_encoder_config(build_encoder("resnet18", decoder_channels=8, head_hidden_dim=8,
                                          embedding_dim=8))
    run.encoder_from_config()
    assert warnings == []
    serialized = storage.read_json(run.encoder_config_path)
    del serialized["config"]["grid"]
    storage.write_json_atomic(run.encoder_config_path, serialized)
    run.encoder_from_config()
    assert len(warnings) == 1 and "declares no grid" in warnings[0][0]
