"""`experiments/reproduce_small.py` end to end at a tiny budget: on a generated folder
layout, and on the real data (limited to a few files) when `VADER_SHARED_DATA` is set."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.eval.conftest import save_png, square_scene

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "reproduce_small.py")
EVALUATIONS = ("linear_probe", "davis_label_propagation", "correspondence")
TAPS = (("vader", "features"), ("vader", "P4"), ("moco", "P4"), ("random", "P4"))
FIGURES = ("pretraining_curves.png", "camvid_miou.png", "feature_pca.png")

TINY_BUDGET = [
    "--train_steps=2", "--image_size=64", "--batch_size=4", "--checkpoint_every=1",
    "--probe_image_size=32", "--probe_steps=3", "--probe_limit=2", "--davis_image_size=32",
    "--davis_max_frames=3", "--correspondence_image_size=64", "--correspondence_images=1",
    "--verbose=0",
]


def make_data_root(root):
    """BSDS500, CamVid and DAVIS layouts with a few small generated images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test", "val"):
        for i in range(2):
            image, _ = square_scene(80, 96, 10 + 5 * i, 20, 30, rng)
            save_png(os.path.join(root, "bsds500", "images", split, f"{i}.png"), image)
    camvid = os.path.join(root, "camvid")
    for split in ("train", "val"):
        lines = []
        for i in range(2):
            image, mask = square_scene(48, 64, 8, 10 + 6 * i, 20, rng)
            label = np.where(mask == 1, 8, 0).astype(np.uint8)
            label[:2] = 11
            save_png(os.path.join(camvid, split, f"{i}.png"), image)
            save_png(os.path.join(camvid, f"{split}annot", f"{i}.png"), label)
            lines.append(f"{split}/{i}.png {split}annot/{i}.png")
        with open(os.path.join(camvid, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    for t in range(3):
        image, mask = square_scene(48, 64, 12, 8 + 4 * t, 16, rng)
        save_png(os.path.join(root, "davis2016", "JPEGImages", "480p", "sq", f"{t:05d}.png"), image)
        save_png(
            os.path.join(root, "davis2016", "Annotations", "480p", "sq", f"{t:05d}.png"),
            (mask * 255).astype(np.uint8),
        )


def run_reproduce(tmp_path, data_root, *extra):
    paths = {
        "run_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        "report": str(tmp_path / "RESULTS.md"),
    }
    command = [
        sys.executable, SCRIPT, f"--data_root={data_root}",
        *(f"--{name}={path}" for name, path in paths.items()), *TINY_BUDGET, *extra,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return paths


def check_outputs(paths):
    results_dir = paths["results_dir"]
    for name, layer in TAPS:
        for evaluation in EVALUATIONS:
            with open(os.path.join(results_dir, f"{evaluation}_{name}_{layer}.json")) as f:
                result = json.load(f)
            assert result["config"]["layer"] == layer
            assert result["command"][0].endswith(".py")
    with open(os.path.join(results_dir, "linear_probe_vader_P4.json")) as f:
        assert 0 <= json.load(f)["metrics"]["mean_iou"] <= 1
    for method in ("vader", "moco"):
        with open(os.path.join(results_dir, f"pretrain_{method}.json")) as f:
            summary = json.load(f)["metrics"]
        assert [entry["step"] for entry in summary["history"]] == [1, 2]
        assert np.isfinite(summary["final_loss"])
    for figure in FIGURES:
        assert 0 < os.path.getsize(os.path.join(results_dir, figure)) < 300_000
    with open(paths["report"]) as f:
        report = f.read()
    for text in ("| VADeR | `features` (trained) |", "| MoCo v2 | `P4` (backbone) |",
                 "| random init | `P4` (backbone) |", "## Budget", "## Caveats", "--train_steps=2"):
        assert text in report


def test_generated_data_end_to_end_and_resume(tmp_path):
    data_root = str(tmp_path / "data")
    make_data_root(data_root)
    paths = run_reproduce(tmp_path, data_root)
    check_outputs(paths)
    # A rerun resumes: pretraining is complete and existing evaluations are skipped.
    probe = os.path.join(paths["results_dir"], "linear_probe_moco_P4.json")
    os.remove(os.path.join(paths["results_dir"], "correspondence_random_P4.json"))
    before = os.path.getmtime(probe)
    notes = tmp_path / "notes.md"
    notes.write_text("Nothing to see at this budget.\n")
    run_reproduce(tmp_path, data_root, f"--notes={notes}")
    check_outputs(paths)
    assert os.path.getmtime(probe) == before
    with open(paths["report"]) as f:
        assert "## Findings\n\nNothing to see at this budget." in f.read()


@pytest.mark.skipif(
    "VADER_SHARED_DATA" not in os.environ, reason="VADER_SHARED_DATA (real data) not set"
)
def test_real_data_end_to_end(tmp_path):
    check_outputs(run_reproduce(tmp_path, os.environ["VADER_SHARED_DATA"]))
