"""`deterministic=True` holds for its run only (issue 19, item 6): a test module's results
must not depend on whether a module that pretrains deterministically ran before it in the
same pytest process.

Two stand-ins for test modules run in one subprocess, in both orders: one pretrains with
`deterministic=True`, the other draws random numbers without a seed (which TensorFlow
refuses while op determinism is on) and reports whether op determinism is on.
"""

import json
import os
import subprocess
import sys

from tests.training.helpers import write_smooth_photos

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MODULES = """
import json, sys
import tensorflow as tf
from tensorflow.python.framework import config as tf_config
from tests.training import helpers
from vader_tf.training import loop
from vader_tf.training.pretrain import pretrain

model_dir, photos, order = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
train = loop.train
during = []

def recording_train(*args, **kwargs):
    during.append(tf_config.is_op_determinism_enabled())
    return train(*args, **kwargs)

loop.train = recording_train


def deterministic_run():
    config = helpers.small_config(
        model_dir, photos, deterministic=True, train_steps=2, checkpoint_every=2
    )
    _, history = pretrain(config)
    return {"losses": [h["loss"] for h in history], "deterministic_during_run": during[-1]}


def other_module():
    # A module that seeds nothing (pretraining set the global seed: clear it, as a
    # module run first would find it) and draws random numbers.
    tf.random.set_seed(None)
    try:
        tf.random.uniform([2])
        drew = "drew"
    except RuntimeError:
        drew = "refused"
    return {"unseeded_random": drew, "op_determinism": tf_config.is_op_determinism_enabled()}


modules = {"deterministic_run": deterministic_run, "other_module": other_module}
print(json.dumps({name: modules[name]() for name in order}))
"""


def _run_in_order(tmp_path, photos, order):
    result = subprocess.run(
        [sys.executable, "-c", _MODULES, str(tmp_path / "-".join(order)), photos, ",".join(order)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_module_results_do_not_depend_on_the_order(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_smooth_photos(photos, 4)
    first = _run_in_order(tmp_path, str(photos), ["deterministic_run", "other_module"])
    second = _run_in_order(tmp_path, str(photos), ["other_module", "deterministic_run"])
    assert first == second
    assert first["other_module"] == {"unseeded_random": "drew", "op_determinism": False}
    assert first["deterministic_run"]["deterministic_during_run"] is True
