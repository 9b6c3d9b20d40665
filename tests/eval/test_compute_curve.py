"""`experiments/compute_curve.py` end to end at a tiny budget on a generated folder layout:
the runs (both methods at every length, in PretrainConfig's default precision), the
curve's JSON, table and figure against the per-run result JSONs, resuming without
retraining, the study report's section, and bad lengths."""

import json
import os

import pytest

from tests.eval.test_reproduce_small import make_data_root, run_experiment, run_reproduce
from vader_tf.studies import compute_curve_study
from vader_tf.training import precision

TINY = (
    "--steps=2,4", "--image_size=64", "--batch_size=4", "--checkpoint_every=1",
    "--probe_image_size=32", "--probe_steps=3", "--probe_limit=2", "--davis_image_size=32",
    "--davis_max_frames=2", "--correspondence_image_size=64", "--correspondence_images=1",
    "--verbose=0",
)
RUNS = ("vader_2", "moco_2", "vader_4", "moco_4")
EVALUATIONS = ("linear_probe", "davis_label_propagation", "correspondence")
# The served output first, then the taps the curve also follows.
LAYERS = compute_curve_study.CURVE_LAYERS
SERVED = compute_curve_study.CURVE_TAP


def run_script(tmp_path, data_root, *extra):
    return run_experiment(
        "compute_curve.py", f"--data_root={data_root}", f"--run_dir={tmp_path / 'runs'}",
        f"--results_dir={tmp_path / 'results' / 'compute_curve'}", *TINY, *extra,
        timeout=900,
    )


def read(path):
    with open(path) as f:
        return json.load(f)


def headline(results, name, layer):
    """The plotted metrics of one run and tap, read from its result JSONs."""
    probe = read(results / f"linear_probe_{name}_{layer}.json")["metrics"]
    davis = read(results / f"davis_label_propagation_{name}_{layer}.json")["metrics"]
    pairs = read(results / f"correspondence_{name}_{layer}.json")["metrics"]
    return {
        "mIoU": probe["mean_iou"], "J&F": davis["JF_mean"], "PCK@8": pairs["all"]["pck@8"],
    }


def test_the_curve_from_runs_in_default_precision_matches_their_results_and_resumes(tmp_path):
    data_root = tmp_path / "data"
    make_data_root(str(data_root))
    completed = run_script(tmp_path, data_root)
    assert completed.returncode == 0, completed.stderr[-3000:]

    runs = tmp_path / "runs" / "seed0"
    assert sorted(os.listdir(runs)) == sorted(RUNS)
    for name in RUNS:
        stored = read(runs / name / "run_config.json")
        method, steps = name.split("_")
        assert stored["method"] == method and stored["train_steps"] == int(steps)
        assert stored["mixed_precision"] == "auto"  # PretrainConfig's default, not float32
        assert stored["queue_size"] == (256 if method == "moco" else 4096)
        assert stored["image_size"] == 64 and stored["seed"] == 0

    # Every run, every tap, every evaluation; each records the run's resolved precision.
    training = {"mixed_precision": precision.resolve("auto"), "symmetric_loss": True}
    out = tmp_path / "results" / "compute_curve"
    results = out / "seed0"
    evaluated = sorted(name for name in os.listdir(results) if not name.startswith("pretrain_"))
    assert evaluated == sorted(
        f"{evaluation}_{name}_{layer}.json"
        for evaluation in EVALUATIONS for name in (*RUNS, "random") for layer in LAYERS
    )
    for name in evaluated:  # Random init has no training to record.
        expected = None if "_random_" in name else training
        assert read(results / name).get("training") == expected, name

    curve = read(out / "compute_curve.json")
    assert curve["training"] == training and curve["vader_fields"] == {}
    assert curve["commands"] == [curve["command"]] and "--steps=2,4" in curve["command"]
    assert sorted(curve["curves"]) == ["moco", "random", "vader"]
    table = (out / "compute_curve.md").read_text()
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:4]): line.split("|")[5:8]
        for line in table.splitlines()
        if line.startswith(("| VADeR |", "| MoCo v2 |", "| random init |"))
    }
    labels = {"vader": "VADeR", "moco": "MoCo v2", "random": "random init"}
    for method in ("vader", "moco", "random"):
        lengths = ["0"] if method == "random" else ["2", "4"]
        assert sorted(curve["curves"][method]) == sorted(LAYERS)
        for layer in LAYERS:
            assert sorted(curve["curves"][method][layer]) == lengths
            for steps in lengths:
                point = curve["curves"][method][layer][steps]
                name = "random" if method == "random" else f"{method}_{steps}"
                expected = headline(results, name, layer)
                assert point["seeds"] == [0]
                for column, value in expected.items():
                    assert point[column] == [value], (method, layer, steps, column)
                cells = rows[labels[method], f"`{layer}`", steps]
                assert [cell.strip() for cell in cells] == [
                    f"{expected[column]:.3f}" for column in ("mIoU", "J&F", "PCK@8")
                ]
    assert "mixed_bfloat16" in table or "float32" in table
    assert (out / "compute_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning trains nothing (no file of a run changes) and recomputes no evaluation
    # (the pretraining summaries are rewritten from the runs' logs).
    watched = [results / name for name in evaluated] + [
        path for name in RUNS for path in sorted((runs / name).rglob("*")) if path.is_file()
    ]
    mtimes = [path.stat().st_mtime_ns for path in watched]
    again = run_script(tmp_path, data_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [
        path for name in RUNS for path in sorted((runs / name).rglob("*")) if path.is_file()
    ] == watched[len(evaluated):]
    assert [path.stat().st_mtime_ns for path in watched] == mtimes

    # The study's report, rewritten from the JSONs present, shows the curve.
    report = run_reproduce(tmp_path, data_root, "--seeds=0", "--report_only")["report"]
    text = open(report).read()
    section = text.split("## Compute curve", 1)[1]
    assert "compute_curve.py" in section and "--steps=2,4" in section
    assert training["mixed_precision"] in section
    figure = "results/compute_curve/compute_curve.png"
    assert f"![Metrics against pretraining steps]({figure})" in section
    assert table.split("\n", 2)[2].strip().splitlines()[2] in section


@pytest.mark.parametrize("flag", ["--steps=4,4", "--steps=0,4", "--methods=vader,densecl"])
def test_bad_lengths_or_methods_are_one_line_and_write_nothing(tmp_path, flag):
    data_root = tmp_path / "data"
    make_data_root(str(data_root))
    completed = run_script(tmp_path, data_root, flag)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith(
        f"compute_curve.py: error: {flag.split('=')[0]}="
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def write_run(results, name, miou, training):
    """A run's pretraining summary and its CamVid result JSON at the served tap."""
    training = {} if training is None else {"training": training}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"pretrain_{name}.json").write_text(json.dumps(
        {"evaluation": "pretraining", "config": {}, "metrics": {}, **training}
    ))
    (results / f"linear_probe_{name}_{SERVED}.json").write_text(json.dumps({
        "evaluation": "linear_probe", "config": {"layer": SERVED},
        "metrics": {"mean_iou": miou}, **training,
    }))


def test_a_seed_added_later_joins_the_curve_and_mixed_precision_is_refused(tmp_path):
    """The curve is every run in its results folder: a later command with another seed
    and one length adds to the points of the first; a run of another precision there
    is refused by name."""
    bfloat16 = {"mixed_precision": "mixed_bfloat16", "symmetric_loss": True}
    write_run(tmp_path / "seed0", "vader_2", 0.25, bfloat16)
    write_run(tmp_path / "seed0", "vader_4", 0.5, bfloat16)
    write_run(tmp_path / "seed1", "vader_4", 0.75, bfloat16)
    write_run(tmp_path / "seed0", "moco_4", 0.125, bfloat16)
    write_run(tmp_path / "seed0", "random", 0.375, None)  # No pretraining summary.
    (tmp_path / "seed0" / "pretrain_random.json").unlink()
    config = compute_curve_study.CurveConfig(
        results_dir=str(tmp_path), seeds=(1,), steps=(4,), layers=(SERVED,)
    )
    curve = compute_curve_study.write_outputs(config, ["first"])
    curve = compute_curve_study.write_outputs(config, ["second"])
    assert curve["commands"] == [["first"], ["second"]]
    assert curve["curves"] == {
        "vader": {SERVED: {"2": {"seeds": [0], "mIoU": [0.25]},
                           "4": {"seeds": [0, 1], "mIoU": [0.5, 0.75]}}},
        "moco": {SERVED: {"4": {"seeds": [0], "mIoU": [0.125]}}},
        "random": {SERVED: {"0": {"seeds": [0], "mIoU": [0.375]}}},
    }
    table = (tmp_path / "compute_curve.md").read_text()
    assert f"| VADeR | `{SERVED}` | 4 | 0, 1 | 0.625 ± 0.177 | n/a | n/a |" in table
    # The margin over the strongest baseline, over the seeds every point has (seed 1 has
    # VADeR only): 0.5 - 0.375 (random init beats MoCo).
    assert (
        f"| 4 | 0 | CamVid val mIoU | 0.500 | `{SERVED}` 0.125 | `{SERVED}` 0.375 | +0.125 |"
        in table
    )
    assert f"| 2 | 0 | CamVid val mIoU | 0.250 | n/a | `{SERVED}` 0.375 | -0.125 |" in table

    # A tap evaluated later (here only for MoCo) joins the curve, and the best-tap margin.
    (tmp_path / "seed0" / "linear_probe_moco_4_decoder+P4.json").write_text(json.dumps({
        "evaluation": "linear_probe", "config": {"layer": "decoder+P4"},
        "metrics": {"mean_iou": 0.5}, "training": bfloat16,
    }))
    curve = compute_curve_study.write_outputs(config, ["second"])
    assert curve["curves"]["moco"]["decoder+P4"] == {"4": {"seeds": [0], "mIoU": [0.5]}}
    table = (tmp_path / "compute_curve.md").read_text()
    margin = f"| 4 | 0 | CamVid val mIoU | 0.500 | `decoder+P4` 0.500 | `{SERVED}` 0.375 | +0.000 |"
    assert margin in table

    # Seed 1 of the baselines, MoCo at length 4 only: length 4 compares seeds 0 and 1,
    # length 2 still seed 0 alone (random init's seed 0, not the mean of both).
    write_run(tmp_path / "seed1", "random", 0.875, None)
    (tmp_path / "seed1" / "pretrain_random.json").unlink()
    write_run(tmp_path / "seed1", "moco_4", 0.25, bfloat16)
    (tmp_path / "seed1" / "linear_probe_moco_4_decoder+P4.json").write_text(json.dumps({
        "evaluation": "linear_probe", "config": {"layer": "decoder+P4"},
        "metrics": {"mean_iou": 0.25}, "training": bfloat16,
    }))
    compute_curve_study.write_outputs(config, ["second"])
    table = (tmp_path / "compute_curve.md").read_text()
    assert f"| random init | `{SERVED}` | 0 | 0, 1 | 0.625 ± 0.354 | n/a | n/a |" in table
    assert f"| 2 | 0 | CamVid val mIoU | 0.250 | n/a | `{SERVED}` 0.375 | -0.125 |" in table
    margin = (
        f"| 4 | 0, 1 | CamVid val mIoU | 0.625 | `decoder+P4` 0.375 | `{SERVED}` 0.625 | +0.000 |"
    )
    assert margin in table
    # A tap measured at seed 0 only is left out of the 2-seed margin, not allowed to
    # narrow it to seed 0.
    (tmp_path / "seed0" / "linear_probe_random_decoder.json").write_text(json.dumps({
        "evaluation": "linear_probe", "config": {"layer": "decoder"},
        "metrics": {"mean_iou": 0.95},
    }))
    compute_curve_study.write_outputs(config, ["second"])
    assert margin in (tmp_path / "compute_curve.md").read_text()

    write_run(tmp_path / "seed1", "moco_4", 0.125, dict(bfloat16, mixed_precision="float32"))
    with pytest.raises(ValueError, match=r"different precision.*seed1/linear_probe_moco_4"):
        compute_curve_study.write_outputs(config, ["third"])
