"""`experiments/tune_small.py` end to end at a tiny budget on a generated folder layout:
runs beside the study's (the default variant is the study's VADeR run), evaluations on
the tuning sets only, the JSON and table, resume, and a bad variant."""

import json
import os

import pytest

from tests.eval.test_reproduce_small import (
    make_data_root, run_experiment, run_reproduce, small_study,
)

TINY = (
    "--train_steps=2", "--image_size=64", "--batch_size=4", "--checkpoint_every=1",
    "--probe_image_size=32", "--probe_steps=3", "--probe_limit=2", "--davis_image_size=32",
    "--davis_max_frames=2", "--verbose=0",
)


def run_script(tmp_path, data_root, *extra):
    return run_experiment(
        "tune_small.py", f"--data_root={data_root}", f"--run_dir={tmp_path / 'runs'}",
        f"--results_dir={tmp_path / 'results'}", *TINY, *extra,
    )


def test_tuning_runs_beside_the_study_on_the_tuning_sets_and_resumes(tmp_path):
    data_root = tmp_path / "data"
    make_data_root(str(data_root))
    completed = run_script(tmp_path, data_root, "--variants=default,temperature_0.1")
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = tmp_path / "runs" / "seed0"
    assert sorted(os.listdir(runs)) == ["vader", "vader_temperature_0.1"]
    for run, temperature in [("vader", 0.2), ("vader_temperature_0.1", 0.1)]:
        stored = json.loads((runs / run / "run_config.json").read_text())
        assert stored["temperature"] == temperature and stored["method"] == "vader"
    # Only the tuning benchmarks: nothing is computed on the correspondence photos.
    results = tmp_path / "results" / "seed0"
    written = sorted(name for name in os.listdir(results) if not name.startswith("pretrain_"))
    assert written == sorted(
        f"{evaluation}_{run}_decoder+P4@0.25.json"
        for evaluation in ("davis_label_propagation", "linear_probe")
        for run in ("vader", "vader_temperature_0.1")
    )
    pretrain = json.loads((results / "pretrain_vader_temperature_0.1.json").read_text())
    assert "--temperature=0.1" in pretrain["command"]

    summary = json.loads((tmp_path / "results" / "tuning.json").read_text())
    assert list(summary["variants"]) == ["default", "temperature_0.1"]
    for variant in summary["variants"].values():
        tap = variant["taps"]["decoder+P4@0.25"]
        assert len(tap["mIoU"]) == 1 and 0.0 <= tap["mIoU"][0] <= 1.0
        assert len(tap["J&F"]) == 1 and 0.0 <= tap["J&F"][0] <= 1.0
    table = (tmp_path / "results" / "tuning.md").read_text().splitlines()
    rows = [line.split("|")[1:-1] for line in table if line.startswith("| ") and "`" in line]
    assert [row[0].strip() for row in rows] == ["default", "temperature_0.1"]
    assert rows[0][5].strip() == "+0.000" and rows[1][1].strip() == "temperature=0.1"

    # The study's report, rewritten from the JSONs present, shows the tuning table.
    report = run_reproduce(tmp_path, data_root, "--seeds=0", "--report_only")["report"]
    with open(report) as f:
        text = f.read()
    assert "## Tuning" in text and "tune_small.py" in text
    # Its command is the one that makes the runs: without --report_only, with a note.
    command = text.split("## Command\n\n```\n", 1)[1].split("\n```", 1)[0]
    assert "reproduce_small.py" in command and "--report_only" not in command
    assert "by the same command with `--report_only`" in text
    assert "\n".join(table[2:]) in text

    mtimes = {name: (results / name).stat().st_mtime_ns for name in written}
    again = run_script(tmp_path, data_root, "--variants=default,temperature_0.1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: (results / name).stat().st_mtime_ns for name in written} == mtimes

    # `--held_out` adds the correspondence photos (for a variant already chosen), and only
    # them: the tuning evaluations are not recomputed.
    held_out = run_script(tmp_path, data_root, "--variants=temperature_0.1", "--held_out")
    assert held_out.returncode == 0, held_out.stderr[-3000:]
    added = sorted(
        name for name in os.listdir(results)
        if not name.startswith("pretrain_") and name not in written
    )
    assert added == ["correspondence_vader_temperature_0.1_decoder+P4@0.25.json"]
    assert {name: (results / name).stat().st_mtime_ns for name in written} == mtimes


def test_an_unknown_variant_is_one_line_and_writes_nothing(tmp_path):
    data_root = tmp_path / "data"
    make_data_root(str(data_root))
    completed = run_script(tmp_path, data_root, "--variants=default,temperature_9")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith(
        "tune_small.py: error: --variants=['default', 'temperature_9']: expected some of"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_the_study_budget_leaves_out_the_tuning_runs_beside_it(tmp_path):
    """The tuning (and speed/quality) JSONs share the study's results folder; the study's
    budget line sums only its own runs and encoders."""
    config = small_study.StudyConfig(results_dir=str(tmp_path), seeds=(0, 1),
                                     layers=("embedding", "decoder", "P4"))
    seconds = {
        "seed0/pretrain_vader.json": dict(seconds=60.0, session_seconds=[60.0]),
        "seed1/pretrain_moco.json": dict(seconds=120.0),
        "seed0/pretrain_vader_temperature_0.1.json": dict(seconds=6000.0),
        "seed0/linear_probe_vader_embedding.json": dict(seconds=30.0),
        "seed1/correspondence_random_P4.json": dict(seconds=90.0),
        "seed0/linear_probe_vader_temperature_0.1_embedding.json": dict(seconds=6000.0),
        "seed0/davis_label_propagation_vader_queued_8_decoder.json": dict(seconds=6000.0),
        "seed2/pretrain_vader.json": dict(seconds=6000.0),  # not one of the seeds
    }
    for name, metrics in seconds.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps({"metrics": metrics}))
    assert small_study.budget_minutes(config) == (4.0, 2.0)


def test_variants_continued_from_moco_run_beside_the_studys_from_moco_run(tmp_path):
    """`--start=moco`: each variant is the study's `vader_from_moco` run (continued from
    the seed's MoCo backbone for `continue_steps`) with its settings changed; `default`
    reuses the study's run; without a finished MoCo run nothing is written."""
    data_root = tmp_path / "data"
    make_data_root(str(data_root))
    missing = run_script(tmp_path, data_root, "--start=moco", "--variants=default")
    assert missing.returncode == 2
    assert "--start=moco:" in missing.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()

    run_reproduce(tmp_path, data_root, "--seeds=0", "--layers=decoder")
    runs = tmp_path / "runs" / "seed0"
    study_run = {
        name: (runs / "vader_from_moco" / name).stat().st_mtime_ns
        for name in os.listdir(runs / "vader_from_moco")
    }
    completed = run_script(
        tmp_path, data_root, "--start=moco", "--continue_steps=1",
        "--variants=default,temperature_0.1", f"--results_dir={tmp_path / 'from_moco'}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    stored = json.loads((runs / "vader_from_moco_temperature_0.1" / "run_config.json").read_text())
    assert stored["temperature"] == 0.1 and stored["train_steps"] == 1
    assert stored["init_weights"] == str(runs / "moco_backbone.weights.h5")
    # The study's own run was not trained again.
    assert {
        name: (runs / "vader_from_moco" / name).stat().st_mtime_ns
        for name in os.listdir(runs / "vader_from_moco")
    } == study_run
    table = (tmp_path / "from_moco" / "tuning.md").read_text()
    assert table.startswith("Seeds 0; continued from each seed's MoCo run;")


def write_headline(results_dir, name, layer, training, miou=None, jf=None, pck8=None):
    """Result JSONs of encoder `name` at `layer` holding the given headline numbers."""
    results = {
        "linear_probe": miou is not None and {"mean_iou": miou},
        "davis_label_propagation": jf is not None and {"J_mean": jf, "F_mean": jf, "JF_mean": jf},
        "correspondence": pck8 is not None and {
            "all": {"pck@8": pck8, "pck@16": pck8, "mean_error": 1.0}
        },
    }
    for evaluation, metrics in results.items():
        if metrics:
            path = results_dir / f"{evaluation}_{name}_{layer}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({
                "evaluation": evaluation, "config": {"layer": layer}, "metrics": metrics,
                **({"training": training} if training else {}),
            }))


def test_the_carried_variant_is_goal_checked_against_the_studys_baselines(tmp_path):
    """The report's carry section: each carried variant's served output against the
    strongest tap of the study's baselines, over the same seeds (numbers worked by hand),
    its PCK@8 floor from the study's own run; a carried run of another precision is
    refused."""
    from vader_tf.studies import tuning_study

    float32 = {"mixed_precision": "float32", "symmetric_loss": True}
    served = small_study.SERVED_TAP
    for seed, offset in ((0, 0.0), (1, 0.02)):
        study = tmp_path / f"seed{seed}"
        write_headline(study, "vader", "embedding", float32, pck8=0.50)
        write_headline(study, "vader", served, float32, miou=0.9, jf=0.9, pck8=0.9)
        write_headline(study, "moco", "P4", float32, miou=0.30 + offset, jf=0.40)
        write_headline(study, "moco", "decoder", float32, miou=0.20, jf=0.50)
        write_headline(study, "random", "decoder", None, miou=0.10, jf=0.55 + offset)
        carry = tmp_path / "methods" / "carry" / f"seed{seed}"
        write_headline(carry, "vader_global_0.5", served, float32,
                       miou=0.35 + offset, jf=0.70 + offset, pck8=0.49 + offset)
    (tmp_path / "methods" / "carry" / "tuning.json").write_text(json.dumps({
        "command": ["python", "experiments/tune_small.py", "--variants=default,global_0.5"],
        "config": {"variants": ["default", "global_0.5"], "seeds": [0, 1], "layers": [served],
                   "start": "random"},
        "variants": {
            variant: {"settings": tuning_study.VARIANTS[variant], "final_loss": [1.0, 1.0],
                      "taps": {served: {"mIoU": [0.3, 0.3], "J&F": [0.6, 0.6]}}}
            for variant in ("default", "global_0.5")
        },
    }))
    config = small_study.StudyConfig(results_dir=str(tmp_path), seeds=(0, 1))
    section = "\n".join(tuning_study.carry_section(config))
    assert "## Method variant carried" in section and "### From random init" in section
    assert "tune_small.py --variants=default,global_0.5" in section
    assert "Continued from MoCo" not in section  # No from-MoCo folder.
    # CamVid: (0.35 + 0.37) / 2 = 36.0 against MoCo's P4 (0.30 + 0.32) / 2 = 31.0: +5.0,
    # std 1.4 -> met.
    assert (
        f"CamVid mIoU: VADeR global_0.5 `{served}` (served) 36.0 vs the strongest baseline, "
        "MoCo v2's `P4` 31.0 (random init's best `decoder` 10.0): gap +5.0 points, "
        "largest seed std 1.4 -> met" in section
    )
    # DAVIS: 71.0 against random init's decoder 56.0 (MoCo's best: decoder, 50.0): +15.0.
    assert "random init's `decoder` 56.0 (MoCo v2's best `decoder` 50.0): gap +15.0" in section
    # PCK@8: 0.500 against the study's VADeR embedding, 0.500: +0.000 -> met.
    assert "(served) 0.500 vs VADeR's `embedding`" in section and "+0.000 -> met" in section

    bfloat16 = dict(float32, mixed_precision="mixed_bfloat16")
    write_headline(tmp_path / "methods" / "carry" / "seed1", "vader_global_0.5", served,
                   bfloat16, miou=0.37)
    with pytest.raises(ValueError, match="precision or loss direction"):
        tuning_study.carry_section(config)
