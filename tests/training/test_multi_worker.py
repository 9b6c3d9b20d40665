"""Two local processes with TF_CONFIG train a few steps and end with identical weights."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.training.helpers import write_smooth_photos
from vader_tf.run_dir import RunDir

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_finish_with_identical_weights(tmp_path):

    data = tmp_path / "photos"
    data.mkdir()
    write_smooth_photos(data, 8)

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    model_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": REPO,
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, os.path.join(HERE, "multi_worker_main.py"), str(model_dir),
                 str(data), str(tmp_path / f"worker{index}.npz")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    for process in processes:
        try:
            output, _ = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        assert process.returncode == 0, output[-3000:]

    chief, other = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert set(chief.files) == set(other.files)
    for name in chief.files:
        np.testing.assert_allclose(chief[name], other[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.all(np.isfinite(chief["loss"]))
    assert int(chief["replicas"]) == 2
    # Only the chief wrote the run directory; the other worker cleaned up its scratch.
    assert RunDir(str(model_dir)).latest_checkpoint().endswith("ckpt-3")
    assert not [p for p in os.listdir(model_dir) if p.endswith("_scratch")]
