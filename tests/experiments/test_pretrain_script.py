"""The pretraining script's flags and shipped flagfiles."""

import dataclasses
import glob
import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.training.helpers import write_smooth_photos
from vader_tf.training.pretrain import PretrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "pretrain.py")


def _dry_run(*args):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--dry_run", *args],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_no_flags_is_the_cpu_main_job_on_embedded_samples():
    config = _dry_run()
    assert config == dataclasses.asdict(PretrainConfig())
    assert config["data"] == "samples" and config["method"] == "vader"


@pytest.mark.parametrize("flagfile", sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.cfg"))))
def test_flagfiles_parse_and_validate(flagfile):
    config = _dry_run(f"--flagfile={flagfile}")
    with open(flagfile) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--"):
                name, _, value = line[2:].partition("=")
                assert str(config[name]) == value or float(config[name]) == float(value), name


def test_paper_scale_config_matches_the_paper_setup():
    config = _dry_run(f"--flagfile={os.path.join(REPO, 'experiments', 'configs', 'imagenet_resnet50_8gpu.cfg')}")
    assert (config["backbone"], config["image_size"], config["embedding_dim"]) == ("resnet50", 224, 128)
    assert (config["queue_size"], config["temperature"], config["ema_momentum"]) == (65536, 0.2, 0.999)


def test_bad_flag_values_are_clear_errors():
    result = subprocess.run(
        [sys.executable, SCRIPT, "--dry_run", "--image_size=100"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode != 0
    assert "image_size must be a positive multiple of 32" in result.stderr


# The pretraining script run with `tensorboard` unimportable, as on an install without it.
_WITHOUT_TENSORBOARD = """
import runpy, sys
sys.modules["tensorboard"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_main_job_runs_without_tensorboard_and_prints_a_pasteable_next_step(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_smooth_photos(photos, 4)
    result = subprocess.run(
        [
            sys.executable, "-c", _WITHOUT_TENSORBOARD, SCRIPT, "--model_dir=run",
            f"--data=folder:{photos}", "--image_size=64", "--batch_size=4", "--num_points=8",
            "--queue_size=64", "--queue_points_per_image=4", "--decoder_channels=16",
            "--embedding_dim=8", "--train_steps=2", "--checkpoint_every=2", "--log_every=1",
            "--verbose=0",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("TensorBoard is not installed") == 1
    assert os.path.isfile(tmp_path / "run" / "encoder.keras")
    assert not glob.glob(str(tmp_path / "run" / "tensorboard" / "events.*"))
    (next_step,) = [line for line in result.stdout.splitlines() if line.startswith("Next: ")]
    words = shlex.split(next_step[len("Next: "):])
    # The export directory is the run's own (not one shared by every run).
    assert words[-2:] == ["--model_dir=run", "--export_dir=exports/run"]
    # The command when installed on PATH, else its module through this interpreter.
    module = [sys.executable, "-m", "vader_tf.scripts.export_saved_model"]
    assert words[:-2] in (["vader-export"], module)


@pytest.mark.parametrize(
    "flag, value",
    [("image_size", "0"), ("image_size", "-64"), ("batch_size", "0"), ("flip_prob", "1.5"),
     ("min_crop_scale", "0"), ("temperature", "-0.2"), ("num_points", "-1")],
)
def test_bad_numbers_fail_before_anything_is_written(tmp_path, flag, value):
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, SCRIPT, f"--model_dir={model_dir}", f"--{flag}={value}"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert result.returncode != 0
    assert f"{flag} must be" in result.stderr and value in result.stderr
    assert not model_dir.exists()
