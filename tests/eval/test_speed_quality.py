"""`experiments/speed_quality.py` end to end at a tiny budget on a generated folder layout:
the JSON and table it writes, and that a rerun resumes instead of recomputing."""

import json
import os
import subprocess
import sys

from tests.eval.test_reproduce_small import EXPERIMENTS, make_data_root

SCRIPT = os.path.join(EXPERIMENTS, "speed_quality.py")
VARIANTS = ("bfloat16_symmetric", "float32_one_direction")


def run_script(tmp_path, data_root):
    command = [
        sys.executable, SCRIPT, f"--data_root={data_root}",
        f"--run_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
        f"--variants={','.join(VARIANTS)}", "--train_steps=2", "--image_size=64",
        "--batch_size=4", "--checkpoint_every=1", "--probe_image_size=32", "--probe_steps=3",
        "--probe_limit=2", "--verbose=0",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(tmp_path / "results" / "speed_quality.json") as f:
        return json.load(f)


def test_speed_quality_writes_every_variant_and_resumes(tmp_path):
    data_root = tmp_path / "data"
    make_data_root(str(data_root))
    result = run_script(tmp_path, data_root)
    assert list(result["variants"]) == list(VARIANTS)
    for name, variant in result["variants"].items():
        assert variant["train_steps"] == 2 and variant["images_seen"] == 8
        assert [step for step, _ in variant["loss_curve"]] == [1, 2]
        assert variant["seconds_per_step"] > 0
        assert 0.0 <= variant["camvid_val_miou"] <= 1.0
        with open(tmp_path / "runs" / name / "run_config.json") as f:
            stored = json.load(f)
        assert {k: stored[k] for k in variant["settings"]} == variant["settings"]
    table = (tmp_path / "results" / "speed_quality.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == list(VARIANTS)

    # Probed at the served tap; each probe JSON records its run's precision and direction.
    assert result["layer"] == "decoder"
    probes = [tmp_path / "results" / f"linear_probe_{name}_decoder.json" for name in VARIANTS]
    for name, path in zip(VARIANTS, probes):
        with open(path) as f:
            assert json.load(f)["training"] == {
                "bfloat16_symmetric": {"mixed_precision": "mixed_bfloat16", "symmetric_loss": True},
                "float32_one_direction": {"mixed_precision": "float32", "symmetric_loss": False},
            }[name]
    written = [path.stat().st_mtime_ns for path in probes]
    again = run_script(tmp_path, data_root)
    assert [path.stat().st_mtime_ns for path in probes] == written
    assert again["variants"] == result["variants"]
