"""SIGTERM and SIGINT during training: a checkpoint at that step, one line, the signal's
exit status, and a rerun that ends where an uninterrupted run ends.

The runs are the `vader-pretrain` command in subprocesses (`preemption_main.py`), which
send themselves the signal once a given step is done: a deterministic moment, unlike a
timer. The oracle is an uninterrupted run of the same command; the resumed run's encoder
must equal it bit for bit.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import write_smooth_photos
from tests.training.test_loop import _encoder_weights, _pretrain_command
from tests.training.test_loop import photo_folder  # noqa: F401  (a fixture)
from tests.training.test_multi_worker import _communicate_all, _free_ports
from vader_tf.run_dir import RunDir
from vader_tf.training import preemption

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRAIN_STEPS = 5
# A step after the checkpoint of step 2 and before that of step 4 (checkpoint_every=2).
SIGNAL_STEP = 3
STOPPED = re.compile(r"at step (\d+): checkpoint written to (\S+); rerun the same command")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, photo_folder):
    model_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = _run(model_dir, photo_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return _encoder_weights(model_dir)


def _env(**extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    env.pop("TF_CONFIG", None)
    return {**env, **extra}


def _command(model_dir, data, signal_name="none", step=SIGNAL_STEP, again="once", *flags):
    pretrain_flags = _pretrain_command(model_dir, data, TRAIN_STEPS)[2:]
    return [
        sys.executable, os.path.join(HERE, "preemption_main.py"), signal_name, str(step),
        again, *pretrain_flags, *flags,
    ]


def _run(model_dir, data, *args):
    return subprocess.run(
        _command(model_dir, data, *args), env=_env(), capture_output=True, text=True,
        timeout=600,
    )


def _assert_equal_weights(expected, actual):
    assert len(expected) == len(actual)
    for x, y in zip(expected, actual):
        np.testing.assert_array_equal(x, y)


def _resume_and_compare(model_dir, data, uninterrupted):
    resumed = _run(model_dir, data)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    assert RunDir(str(model_dir)).latest_checkpoint().endswith(f"ckpt-{TRAIN_STEPS}")
    _assert_equal_weights(uninterrupted, _encoder_weights(model_dir))
    return resumed


@pytest.mark.parametrize("name, status", [("TERM", 143), ("INT", 130)])
def test_signal_saves_at_that_step_and_exits_with_its_status(
    tmp_path, photo_folder, uninterrupted, name, status
):
    model_dir = tmp_path / "run"
    stopped = _run(model_dir, photo_folder, name)
    assert stopped.returncode == status, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if STOPPED.search(line)]
    assert len(lines) == 1, stopped.stderr[-3000:]
    assert f"Received SIG{name} at step {SIGNAL_STEP}:" in lines[0]
    run = RunDir(str(model_dir))
    assert run.latest_checkpoint().endswith(f"ckpt-{SIGNAL_STEP}")
    assert STOPPED.search(lines[0]).group(2) == run.latest_checkpoint()
    assert not os.path.exists(run.encoder_path)  # the run is not finished
    if name == "TERM":  # a rerun after SIGINT resumes alike: one run less in the suite
        resumed = _resume_and_compare(model_dir, photo_folder, uninterrupted)
        assert f"ckpt-{SIGNAL_STEP}" in resumed.stderr  # from the signal's checkpoint


def test_second_signal_during_the_save_exits_at_once_and_keeps_the_newest_checkpoint(
    tmp_path, photo_folder, uninterrupted
):
    model_dir = tmp_path / "run"
    stopped = _run(model_dir, photo_folder, "TERM", SIGNAL_STEP, "again")
    # Killed by the second signal itself (the default action), before the state file's
    # rename: no line, no traceback.
    assert stopped.returncode == -signal.SIGTERM, stopped.stderr[-3000:]
    assert not STOPPED.search(stopped.stderr) and "Traceback" not in stopped.stderr
    run = RunDir(str(model_dir))
    # TensorFlow's temporary copy of the state file is left; the state file still names
    # the checkpoint of step 2, complete.
    leftovers = [n for n in os.listdir(run.checkpoint_dir) if n.startswith("checkpoint.tmp")]
    assert len(leftovers) == 1
    assert run.latest_checkpoint().endswith("ckpt-2")
    resumed = _resume_and_compare(model_dir, photo_folder, uninterrupted)
    assert "ckpt-2" in resumed.stderr and "left half-written by a killed run" in resumed.stderr
    assert not [n for n in os.listdir(run.checkpoint_dir) if n.startswith("checkpoint.tmp")]


# Two workers: TF_CONFIG and the multi-worker strategy, one image per replica.
MULTI_WORKER_FLAGS = ("--strategy=multi_worker", "--batch_size=2", "--bn_groups=1")
MULTI_WORKER_STEPS = 8


def _start_cluster(model_dir, data, signalled=None, signal_step=2):
    """Starts two workers of one run; worker `signalled` gets SIGTERM after `signal_step`."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        # One thread per kernel, so the two clusters compute alike (test_multi_worker.py).
        env = _env(
            TF_CONFIG=json.dumps(tf_config), TF_NUM_INTRAOP_THREADS="1", OMP_NUM_THREADS="1"
        )
        command = _command(
            model_dir, data, "TERM" if index == signalled else "none", signal_step, "once",
            *MULTI_WORKER_FLAGS, f"--train_steps={MULTI_WORKER_STEPS}",
            f"--checkpoint_every={MULTI_WORKER_STEPS}",
        )
        processes.append(subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ))
    return _communicate_all(processes)


def test_sigterm_to_one_worker_stops_both_at_one_step_and_the_rerun_resumes(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    write_smooth_photos(data, 8)

    for returncode, output in _start_cluster(tmp_path / "straight", data):
        assert returncode == 0, output[-3000:]
    expected = _encoder_weights(tmp_path / "straight")

    model_dir = tmp_path / "run"
    outputs = _start_cluster(model_dir, data, signalled=1)
    steps = []
    for index, (returncode, output) in enumerate(outputs):
        assert returncode == 143, output[-3000:]
        assert "Traceback" not in output
        lines = [line for line in output.splitlines() if STOPPED.search(line)]
        assert len(lines) == 1, output[-3000:]
        cause = "Received SIGTERM" if index == 1 else "Another worker received"
        assert cause in lines[0]
        steps.append(int(STOPPED.search(lines[0]).group(1)))
    # Both at one step, after the signal's (the handler lets the workers agree on the
    # next one) and before the end, which is the only checkpoint step.
    assert steps[0] == steps[1] and 2 < steps[0] < MULTI_WORKER_STEPS, steps
    assert RunDir(str(model_dir)).latest_checkpoint().endswith(f"ckpt-{steps[0]}")
    assert not [p for p in os.listdir(model_dir) if p.endswith("_scratch")]

    for returncode, output in _start_cluster(model_dir, data):
        assert returncode == 0, output[-3000:]
        assert f"ckpt-{steps[0]}" in output
    _assert_equal_weights(expected, _encoder_weights(model_dir))


class Failure(Exception):
    pass


def test_handlers_are_installed_for_the_block_only_and_in_the_main_thread(tmp_path):
    strategy = tf.distribute.get_strategy()
    before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
    with pytest.raises(Failure):
        with preemption.watch(strategy, str(tmp_path)) as stop:
            assert all(signal.getsignal(s) != before[s] for s in preemption.STOP_SIGNALS)
            stop.check(1, save=lambda: pytest.fail("saved without a signal"))
            raise Failure()
    assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before

    # A signal is noted, not acted on, until the loop checks; then save, one exit status.
    with pytest.raises(preemption.TrainingInterrupted) as stopped:
        with preemption.watch(strategy, str(tmp_path)) as stop:
            signal.raise_signal(signal.SIGINT)
            # A second signal would now end the process: the default action is back.
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            stop.check(7, save=lambda: "ckpt-7")
    assert (stopped.value.code, stopped.value.step, stopped.value.checkpoint) == (130, 7, "ckpt-7")
    assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before

    seen = []

    def in_thread():
        with preemption.watch(strategy, str(tmp_path)):
            seen.append({s: signal.getsignal(s) for s in preemption.STOP_SIGNALS})

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [before]
