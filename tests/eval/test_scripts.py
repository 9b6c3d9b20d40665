"""Every evaluation script end to end on tiny generated data (random resnet18), and on
the real data when `VADER_SHARED_DATA` is set. Protocol flags (generated from
`vader_tf.eval.protocols`) reach the evaluation and are recorded in the result JSON."""

import json
import os
import subprocess
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")
PROTOCOLS = {
    "eval_linear_probe": "CamVidProbeProtocol",
    "finetune_segmentation": "FinetuneProtocol",
    "eval_davis": "DavisProtocol",
    "eval_correspondence": "CorrespondenceProtocol",
    "eval_depth": "DepthProtocol",
}


def run_script(name, tmp_path, *flags):
    output = str(tmp_path / f"{name}.json")
    command = [sys.executable, os.path.join(EXPERIMENTS, f"{name}.py"), *flags]
    if name != "visualize_features":
        command.append(f"--output={output}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    if name == "visualize_features":
        output = str(tmp_path / "vis" / "visualization.json")
    with open(output) as f:
        results = json.load(f)
    assert results["command"][1:] == command[2:]
    assert results["encoder"] == "random:resnet18"
    if name in PROTOCOLS:
        assert results["protocol"]["name"] == PROTOCOLS[name]
        # The script's other settings, without repeating the protocol's.
        assert "seed" in results["config"]
        assert not set(results["protocol"]) & set(results["config"])
    return results


def test_linear_probe_script(tmp_path, segmentation_root):
    results = run_script(
        "eval_linear_probe", tmp_path, "--encoder=random:resnet18",
        f"--data_root={segmentation_root}", "--num_classes=2", "--ignore_label=255",
        "--image_size=64", "--steps=20", "--pixels_per_image=7",
    )
    assert 0 <= results["metrics"]["mean_iou"] <= 1
    assert len(results["metrics"]["per_class_iou"]) == 2
    assert results["metrics"]["num_train_cells"] == 4 * 7  # 4 training images.
    assert results["protocol"] == {
        "name": "CamVidProbeProtocol", "image_size": 64, "steps": 20, "batch_size": 4096,
        "learning_rate": 0.01, "pixels_per_image": 7, "num_classes": 2, "ignore_label": 255,
    }


def test_finetune_script(tmp_path, segmentation_root):
    results = run_script(
        "finetune_segmentation", tmp_path, "--encoder=random:resnet18",
        f"--data_root={segmentation_root}", "--num_classes=2", "--ignore_label=255",
        "--image_size=64", "--steps=2", "--batch_size=8", "--head_channels=4", "--limit=2",
    )
    assert 0 <= results["metrics"]["mean_iou"] <= 1
    # Batches are capped at the 2 training images, and the protocol records what was used.
    assert results["protocol"]["batch_size"] == 2
    assert results["protocol"]["head_channels"] == 4


def test_davis_script(tmp_path, davis_root):
    results = run_script(
        "eval_davis", tmp_path, "--encoder=random:resnet18", f"--davis_root={davis_root}",
        "--image_size=72", "--radius=0",
    )
    assert results["protocol"]["radius"] == 0 and results["protocol"]["topk"] == 10
    assert set(results["metrics"]["sequences"]) == {"square"}
    assert 0 <= results["metrics"]["JF_mean"] <= 1


def test_correspondence_script(tmp_path, davis_root):
    results = run_script(
        "eval_correspondence", tmp_path, "--encoder=random:resnet18",
        f"--image_dir={davis_root}/JPEGImages", "--num_images=2", "--image_size=64",
        "--thresholds=3,5.5",
    )
    assert results["metrics"]["num_pairs"] == 4
    scores = results["metrics"]["all"]
    assert {key for key in scores if key.startswith("pck@")} == {"pck@3", "pck@5.5"}
    assert 0 <= scores["pck@3"] <= scores["pck@5.5"] <= 1
    assert results["protocol"]["thresholds"] == [3.0, 5.5]


def test_depth_script(tmp_path, depth_root):
    results = run_script(
        "eval_depth", tmp_path, "--encoder=random:resnet18", f"--data_root={depth_root}",
        "--image_size=64", "--steps=20", "--pixels_per_image=5",
    )
    assert results["metrics"]["rmse"] > 0
    assert results["metrics"]["num_train_cells"] == 4 * 5  # 4 training images.
    assert results["protocol"]["pixels_per_image"] == 5


def test_visualize_script(tmp_path, davis_root):
    results = run_script(
        "visualize_features", tmp_path, "--encoder=random:resnet18",
        f"--image={davis_root}/JPEGImages/480p/square/00000.jpg", "--image_size=64",
        f"--output_dir={tmp_path / 'vis'}", "--point=10,20",
    )
    assert all(os.path.exists(path) for path in results["metrics"]["files"].values())


SHARED_DATA = os.environ.get("VADER_SHARED_DATA")
needs_shared_data = pytest.mark.skipif(not SHARED_DATA, reason="VADER_SHARED_DATA is not set")


@needs_shared_data
def test_linear_probe_on_camvid(tmp_path):
    results = run_script(
        "eval_linear_probe", tmp_path, "--encoder=random:resnet18",
        f"--data_root={SHARED_DATA}/camvid", "--limit=4", "--image_size=96", "--steps=30",
    )
    assert len(results["metrics"]["per_class_iou"]) == 11
    assert 0 < results["metrics"]["mean_iou"] <= 1


@needs_shared_data
def test_davis_on_real_sequence(tmp_path):
    results = run_script(
        "eval_davis", tmp_path, "--encoder=random:resnet18",
        f"--davis_root={SHARED_DATA}/davis2016", "--sequences=blackswan", "--max_frames=5",
        "--image_size=128",
    )
    sequence = results["metrics"]["sequences"]["blackswan"]
    assert len(sequence["J_per_frame"]) == 4
    assert 0 < results["metrics"]["J_mean"] <= 1
