"""`experiments/reproduce_small.py` end to end at a tiny budget: on a generated folder
layout, and on the real data (limited to a few files) when `VADER_SHARED_DATA` is set."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.eval.conftest import save_png, square_scene
from vader_tf.studies import small_study

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")
SCRIPT = os.path.join(EXPERIMENTS, "reproduce_small.py")

EVALUATIONS = ("linear_probe", "davis_label_propagation", "correspondence")
# The protocols of TINY_BUDGET: the study's shrunk sizes and steps, other fields default.
PROTOCOLS = {
    "linear_probe": {"name": "CamVidProbeProtocol", "image_size": 32, "steps": 3},
    "davis_label_propagation": {"name": "DavisProtocol", "image_size": 32, "radius": 12.0},
    "correspondence": {"name": "CorrespondenceProtocol", "image_size": 64},
}
ENCODERS = ("vader", "moco", "random", "vader_from_moco", "moco_continued")
FIGURES = ("pretraining_curves.png", "camvid_miou.png", "feature_pca.png")
# The study pins float32 and the symmetric loss.
TRAINING = {"mixed_precision": "float32", "symmetric_loss": True}

TINY_BUDGET = [
    "--train_steps=2", "--continue_steps=1", "--image_size=64", "--batch_size=4",
    "--checkpoint_every=1", "--probe_image_size=32", "--probe_steps=3", "--probe_limit=2",
    "--davis_image_size=32", "--davis_max_frames=3", "--correspondence_image_size=64",
    "--correspondence_images=1", "--verbose=0",
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


def run_experiment(script, *flags, timeout=600):
    """Runs `experiments/<script>` with `flags` in a subprocess; returns it completed."""
    command = [sys.executable, os.path.join(EXPERIMENTS, script), *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def run_reproduce(tmp_path, data_root, *extra, expect_ok=True):
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
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if expect_ok:
        assert completed.returncode == 0, completed.stderr[-3000:]
        return paths
    return completed


def check_outputs(paths, seeds, layers, continued=True, unrecorded=()):
    """Checks the result JSONs, figures and report; `unrecorded` are result JSONs written
    (by the test) as before protocols were recorded."""
    results_dir = paths["results_dir"]
    encoders = ENCODERS if continued else ENCODERS[:3]
    runs = (("vader", 2), ("moco", 2), ("vader_from_moco", 1), ("moco_continued", 1))
    for seed in seeds:
        seed_dir = os.path.join(results_dir, f"seed{seed}")
        for name in encoders:
            for layer in layers:
                for evaluation in EVALUATIONS:
                    path = os.path.join(seed_dir, f"{evaluation}_{name}_{layer}.json")
                    with open(path) as f:
                        result = json.load(f)
                    assert result["config"]["layer"] == layer
                    assert result["config"]["seed"] == seed
                    if path in unrecorded:
                        assert "protocol" not in result
                        continue
                    # The tap names are those of this serving contract; the encoder's
                    # precision and loss direction are recorded (none for random init).
                    assert result["config"]["serving_contract"] == 3
                    assert result.get("training") == (None if name == "random" else TRAINING)
                    assert result["command"][0].endswith(".py")
                    protocol = result["protocol"]
                    assert protocol.items() >= PROTOCOLS[evaluation].items(), protocol
                    # The recorded command sets every field of the protocol.
                    for key, value in protocol.items():
                        if key != "name" and not isinstance(value, list):
                            assert f"--{key}={value}" in result["command"], key
        for name, steps in runs if continued else runs[:2]:
            with open(os.path.join(seed_dir, f"pretrain_{name}.json")) as f:
                summary = json.load(f)
            assert [entry["step"] for entry in summary["metrics"]["history"]] == list(
                range(1, steps + 1)
            )
            assert np.isfinite(summary["metrics"]["final_loss"])
            assert f"--seed={seed}" in summary["command"]
            assert summary["training"] == TRAINING
    for figure in FIGURES:
        assert 0 < os.path.getsize(os.path.join(results_dir, figure)) < 300_000
    with open(paths["report"]) as f:
        report = f.read()
    taps = {"embedding": "`embedding` (trained)", "decoder": "`decoder` (trained)",
            "P4": "`P4` (backbone)",
            "decoder+P4@0.25": "`decoder+P4@0.25` (trained + backbone, served)"}
    rows = ["| VADeR from MoCo | `", "| MoCo v2 continued | `"] if continued else []
    for text in (f"| VADeR | {taps[layers[0]]} |", "| MoCo v2 | `", "| random init | `",
                 *rows, "## Budget", "## Caveats", "**Goal**", "--train_steps=2"):
        assert text in report, text
    return report


def test_generated_data_end_to_end_and_resume(tmp_path):
    data_root = str(tmp_path / "data")
    make_data_root(data_root)
    # An earlier version's results, shown as their own rows.
    before = tmp_path / "before"
    before.mkdir()
    (before / "linear_probe_vader_P4.json").write_text(
        json.dumps({"metrics": {"mean_iou": 0.1234}})
    )
    paths = run_reproduce(
        tmp_path, data_root, "--seeds=0", "--layers=P4", f"--before_dir={before}",
        "--before_label=v0.1",
    )
    report = check_outputs(paths, seeds=(0,), layers=("P4",))
    assert "| VADeR (v0.1) | `P4` (backbone) | 1 | 0.123 |" in report
    # The continued runs start from the MoCo run's final backbone.
    seed_runs = os.path.join(paths["run_dir"], "seed0")
    with open(os.path.join(seed_runs, "vader_from_moco", "run_config.json")) as f:
        start = json.load(f)["init_weights"]
    assert start == os.path.join(seed_runs, "moco_backbone.weights.h5")
    import vader_tf

    moco = vader_tf.load_encoder(os.path.join(seed_runs, "moco")).backbone
    started = vader_tf.build_encoder("resnet18").backbone
    started.load_weights(start)
    for a, b in zip(moco.weights, started.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # A second seed's results (copied, one number changed): rows become mean ± std.
    seed0 = os.path.join(paths["results_dir"], "seed0")
    seed1 = os.path.join(paths["results_dir"], "seed1")
    shutil.copytree(seed0, seed1)
    probe1 = os.path.join(seed1, "linear_probe_vader_P4.json")
    with open(probe1) as f:
        result = json.load(f)
    first = result["metrics"]["mean_iou"]
    result["metrics"]["mean_iou"] = first + 0.1
    with open(probe1, "w") as f:
        json.dump(result, f)
    run_reproduce(tmp_path, data_root, "--seeds=0,1", "--layers=P4", "--report_only")
    with open(paths["report"]) as f:
        report = f.read()
    mean, std = np.mean([first, first + 0.1]), np.std([first, first + 0.1], ddof=1)
    assert f"| VADeR | `P4` (backbone) | 2 | {mean:.3f} ± {std:.3f} |" in report
    assert not os.path.exists(os.path.join(paths["run_dir"], "seed1"))

    # A rerun resumes: pretraining is complete and existing evaluations are skipped,
    # also those written before protocols were recorded (no "protocol" key); one made
    # with another protocol is recomputed.
    probe = os.path.join(seed0, "linear_probe_moco_P4.json")
    os.remove(os.path.join(seed0, "correspondence_random_P4.json"))
    modified = os.path.getmtime(probe)
    old_davis = os.path.join(seed0, "davis_label_propagation_vader_P4.json")
    with open(old_davis) as f:
        result = json.load(f)
    del result["protocol"]
    with open(old_davis, "w") as f:
        json.dump(result, f)
    stale = os.path.join(seed0, "linear_probe_random_P4.json")
    with open(stale) as f:
        result = json.load(f)
    result["protocol"]["steps"] = 999
    with open(stale, "w") as f:
        json.dump(result, f)
    notes = tmp_path / "notes.md"
    notes.write_text("Nothing to see at this budget.\n")
    run_reproduce(tmp_path, data_root, "--seeds=0", "--layers=P4", f"--notes={notes}")
    report = check_outputs(paths, seeds=(0,), layers=("P4",), unrecorded=(old_davis,))
    assert os.path.getmtime(probe) == modified
    with open(stale) as f:
        assert json.load(f)["protocol"]["steps"] == 3
    assert "## Findings\n\nNothing to see at this budget." in report


def test_bad_flags_are_one_line_errors(tmp_path):
    data_root = str(tmp_path / "data")
    make_data_root(data_root)
    for flag, text in (("--layers=P9", "P9"), ("--seeds=a", "--seeds"),
                       (f"--data_root={tmp_path}", "--data_root")):
        completed = run_reproduce(tmp_path, data_root, flag, expect_ok=False)
        assert completed.returncode != 0
        assert text in completed.stderr
        assert "Traceback" not in completed.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_mean_std_and_goal_check_against_numpy():
    values = {"mIoU": [0.30, 0.34, 0.32], "J&F": [0.70, 0.74, 0.72]}
    baseline_p4 = {"mIoU": [0.25, 0.27, 0.26], "J&F": [0.41, 0.40, 0.42]}
    aggregated = {
        ("vader", "decoder+P4@0.25"): {**values, "PCK@8": [0.55, 0.56, 0.54]},
        # Not served; its PCK@8 is the goal's floor.
        ("vader", "embedding"): {"mIoU": [0.9] * 3, "J&F": [0.9] * 3, "PCK@8": [0.56] * 3},
        ("moco", "P4"): baseline_p4,
        ("moco", "decoder"): {"mIoU": [0.2, 0.2, 0.2], "J&F": [0.5, 0.5, 0.5]},
        ("random", "decoder"): {"mIoU": [0.1, 0.1, 0.1], "J&F": [0.6, 0.63, 0.6]},
    }
    mean, std = small_study.mean_std(values["mIoU"])
    assert mean == pytest.approx(np.mean(values["mIoU"]))
    assert std == pytest.approx(np.std(values["mIoU"], ddof=1))
    assert small_study.mean_std([0.5]) == (0.5, None)
    lines = small_study.goal_check(aggregated)
    # The served `decoder+P4@0.25` against the strongest baseline tap. mIoU: MoCo's P4,
    # 32 - 26 = +6 points >= 3, std 2 < 6 -> met.
    assert "`decoder+P4@0.25` (served) 32.0" in lines[0]
    assert "MoCo v2's `P4` 26.0" in lines[0]
    assert "random init's best `decoder` 10.0" in lines[0]
    assert "+6.0 points" in lines[0] and "-> met" in lines[0]
    # J&F: random init's decoder (61) beats MoCo's best (50): 72 - 61 = +11 >= 10, but
    # random's seed std (1.7) < 11 -> met; against MoCo alone it would read +22.
    assert "strongest baseline, random init's `decoder` 61.0" in lines[1]
    assert "MoCo v2's best `decoder` 50.0" in lines[1]
    assert "+11.0 points" in lines[1] and "-> met" in lines[1]
    # PCK@8: 0.550 against the embedding's 0.560 -> missed.
    assert "(served) 0.550 vs VADeR's `embedding`" in lines[2] and "-0.010 -> missed" in lines[2]
    aggregated["vader", "embedding"]["PCK@8"] = [0.55, 0.55, 0.54]
    assert "+0.003 -> met" in small_study.goal_check(aggregated)[2]
    aggregated["random", "P4"] = {"J&F": [0.65, 0.65, 0.65]}
    assert "+7.0 points" in small_study.goal_check(aggregated)[1]
    assert "-> missed" in small_study.goal_check(aggregated)[1]
    table = small_study.results_table(aggregated)
    assert (
        "| VADeR | `decoder+P4@0.25` (trained + backbone, served) | 3 | 0.320 ± 0.020 |"
        in table
    )


def write_result(path, layer, training=None, **config):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    result = {"evaluation": "linear_probe", "config": {"layer": layer, **config},
              "metrics": {"mean_iou": 0.5}}
    if training is not None:
        result["training"] = training
    with open(path, "w") as f:
        json.dump(result, f)


def write_summary(path, **config):
    with open(path, "w") as f:
        json.dump({"evaluation": "pretraining", "config": config, "metrics": {}}, f)


def test_a_features_result_of_unknown_meaning_is_refused(tmp_path):
    """A `features` JSON without a serving contract version may be the projection head's
    output (contract 1) or the decoder's (2): the report refuses it, by name, instead of
    averaging the two meanings; one that records its contract is read."""
    config = small_study.StudyConfig(results_dir=str(tmp_path), seeds=(0, 1),
                                     layers=("features",))
    old = os.path.join(config.seed_results(0), "linear_probe_vader_features.json")
    write_result(old, "features")
    write_result(os.path.join(config.seed_results(1), "linear_probe_vader_features.json"),
                 "features", serving_contract=2)
    with pytest.raises(ValueError, match="linear_probe_vader_features.json: tap `features`"):
        small_study.aggregate(config)
    with pytest.raises(ValueError, match="tap `features`"):
        small_study.Evaluations(config).is_done(old, "linear_probe")
    os.remove(old)
    assert small_study.aggregate(config) == {("vader", "features"): {"mIoU": [0.5]}}


def test_runs_of_different_precision_or_direction_are_not_aggregated(tmp_path):
    """Result JSONs record their run's precision and direction (or count as their
    pretraining summary's config says); the report refuses to average mixed ones."""
    config = small_study.StudyConfig(results_dir=str(tmp_path), seeds=(0, 1, 2),
                                     layers=("decoder",))
    float32 = {"mixed_precision": "float32", "symmetric_loss": True}
    for seed in (0, 1):
        write_result(os.path.join(config.seed_results(seed), "linear_probe_vader_decoder.json"),
                     "decoder", training=float32)
    # Seed 2 records nothing: its pretraining summary (written before `training` was
    # recorded) says bfloat16.
    seed2 = config.seed_results(2)
    write_result(os.path.join(seed2, "linear_probe_vader_decoder.json"), "decoder")
    write_summary(os.path.join(seed2, "pretrain_vader.json"),
                  mixed_precision="mixed_bfloat16", symmetric_loss=True)
    with pytest.raises(ValueError, match=r"precision or loss direction: .*seed[01]/.*seed2/"):
        small_study.aggregate(config)
    # The same summary in float32 (the study's pinned setting; a summary older than the
    # option counts as symmetric) aggregates.
    write_summary(os.path.join(seed2, "pretrain_vader.json"), mixed_precision="none")
    assert small_study.aggregate(config)["vader", "decoder"]["mIoU"] == [0.5] * 3
    # One direction in one seed's record is refused too.
    write_result(os.path.join(seed2, "linear_probe_vader_decoder.json"), "decoder",
                 training=dict(float32, symmetric_loss=False))
    with pytest.raises(ValueError, match="'symmetric_loss': False"):
        small_study.aggregate(config)


def test_report_refuses_ambiguous_results_in_one_line_and_writes_nothing(tmp_path):
    data_root = str(tmp_path / "data")
    make_data_root(data_root)
    write_result(str(tmp_path / "results" / "seed0" / "linear_probe_vader_features.json"),
                 "features")
    completed = run_reproduce(tmp_path, data_root, "--seeds=0", "--layers=features",
                              "--report_only", expect_ok=False)
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("reproduce_small.py: error: ") and "vader_features.json" in last
    assert not os.path.exists(tmp_path / "RESULTS.md")


@pytest.mark.skipif(
    "VADER_SHARED_DATA" not in os.environ, reason="VADER_SHARED_DATA (real data) not set"
)
def test_real_data_end_to_end(tmp_path):
    # The paper's setting is covered on generated data; here only the real-data readers.
    paths = run_reproduce(
        tmp_path, os.environ["VADER_SHARED_DATA"], "--seeds=0", "--layers=decoder",
        "--continue_steps=0",
    )
    check_outputs(paths, seeds=(0,), layers=("decoder",), continued=False)
