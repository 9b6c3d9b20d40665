"""`experiments/tune_small.py` end to end at a tiny budget on a generated folder layout:
runs beside the study's (the default variant is the study's VADeR run), evaluations on
the tuning sets only, the JSON and table, resume, and a bad variant."""

import json
import os

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
