"""The benchmark suite runs end to end in quick mode and writes well-formed results.

Benchmarks are not tests: nothing here checks a timing, only that the command works and
that the result files have the documented schema.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ("loss_scaling", "input_pipeline")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("benchmark_results")
    command = [
        sys.executable,
        os.path.join(REPO, "benchmarks", "run_all.py"),
        "--quick",
        "--only",
        ",".join(QUICK),
        "--results_dir",
        str(results_dir),
    ]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "failed: none" in completed.stdout
    results = {}
    for name in QUICK:
        with open(results_dir / f"{name}.json") as f:
            results[name] = json.load(f)
    return results


@pytest.mark.parametrize("name", QUICK)
def test_result_schema(quick_results, name):
    result = quick_results[name]
    assert set(result) == {"benchmark", "quick", "environment", "config", "results"}
    assert result["benchmark"] == name and result["quick"] is True
    assert result["environment"]["cpu_count"] == os.cpu_count()
    assert result["environment"]["tensorflow"]
    assert result["results"]["wall_time_s"] >= 0


def test_loss_scaling_grid(quick_results):
    results = quick_results["loss_scaling"]["results"]
    assert len(results["grid"]) == 4
    for row in results["grid"]:
        assert row["median_s"] > 0 and row["peak_bytes"] > 0
        assert row["rows"] == 2 * 2 * row["points_per_image"]
    assert set(results["time_vs_rows_x_queue"]) == {"slope", "intercept", "r_squared"}


def test_input_pipeline_ratio_is_reported(quick_results):
    results = quick_results["input_pipeline"]["results"]
    ratio = results["pipeline_pairs_per_s"] / results["train_step_pairs_per_s"]
    assert results["pipeline_over_train_step"] == pytest.approx(ratio, rel=1e-2)
