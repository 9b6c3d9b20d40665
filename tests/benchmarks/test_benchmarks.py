"""The benchmark suite runs end to end in quick mode and writes well-formed results.

Benchmarks are not tests: nothing here checks a timing, only that the command works and
that the result files have the documented schema.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ("loss_scaling", "input_pipeline", "decoded_cache", "label_propagation")


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


def test_decoded_cache_reports_end_to_end_over_bare_step(quick_results):
    results = quick_results["decoded_cache"]["results"]
    for arm in ("cache_on", "cache_off", "bare_step"):
        assert len(results[arm]["runs"]) == 1 and results[arm]["images_per_s"] > 0
    bare = results["bare_step"]["images_per_s"]
    on, off = results["cache_on"]["images_per_s"], results["cache_off"]["images_per_s"]
    assert results["end_to_end_over_bare"] == pytest.approx(on / bare, rel=1e-2)
    assert results["end_to_end_over_bare_cache_off"] == pytest.approx(off / bare, rel=1e-2)
    target = results["target"]
    assert target["minimum"] == 0.9 and target["measured"] == results["end_to_end_over_bare"]
    assert target["met"] is (target["measured"] >= 0.9)


def test_bare_step_dataset_is_the_first_batch_repeated():
    """The bare-step arm's dataset: the pipeline's first batch, built with the loop's
    arguments, then repeated with the pipeline's element spec (no input work per step)."""
    import tensorflow as tf

    from benchmarks import decoded_cache

    calls = []

    def training_dataset(*args, drop_remainder=True, **kwargs):
        calls.append((args, kwargs))
        numbers = tf.data.Dataset.range(100).batch(4, drop_remainder=drop_remainder)
        return numbers.map(lambda x: {"points": x})

    fixed = decoded_cache._one_batch_repeated(training_dataset)
    dataset = fixed("config", "source", batch_size=4, start_index=8)
    assert calls == [(("config", "source"), {"batch_size": 4, "start_index": 8})]
    elements = [e["points"].numpy().tolist() for e in dataset.take(3)]
    assert elements == [[0, 1, 2, 3]] * 3
    # A pipeline whose batches have no static size would trace another step graph.
    with pytest.raises(TypeError, match="differs from the pipeline"):
        fixed("config", drop_remainder=False)


def test_peer_densecl_steps_and_flop_counters():
    """The peer's steps at a tiny size, in this process (tracing a step of ours would take
    a minute: `run_all.py --quick --only peer_densecl` covers those)."""
    for module in ("lightly", "torchvision"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[peer]')")
    from benchmarks import peer_densecl

    result = peer_densecl.measure(
        dict(backbone="resnet18", image_size=32, batch_size=2),
        repeats=1,
        selected=lambda name: name.startswith("peer_"),
        warmup=0,
    )
    steps = result["steps"]
    expected = {
        f"peer_densecl_{direction}/{dtype}"
        for direction in ("one_direction", "symmetric")
        for dtype in ("float32", "bfloat16")
    }
    assert set(steps) == expected
    for step in steps.values():
        assert step["images_per_s"] > 0 and step["step_flops"] > 0
        assert step["achieved_flops_per_s"] == step["step_flops"] / step["step_s"]
    # One direction: query forward + backward (3 forward passes' FLOPs) and key forward on
    # one view per image, plus the small heads and losses; symmetric: both views.
    one_view_forward = result["flop_counter_check"]["torch_flop_counter"]
    for dtype in ("float32", "bfloat16"):
        one = steps[f"peer_densecl_one_direction/{dtype}"]["step_flops"]
        both = steps[f"peer_densecl_symmetric/{dtype}"]["step_flops"]
        assert both == pytest.approx(2 * one, rel=0.01)
        assert one == pytest.approx(2 * 4 * one_view_forward, rel=0.1)
    # torch's FLOP counter and our graph counter agree on the same ResNet.
    assert result["flop_counter_check"]["graph_over_torch"] == pytest.approx(1.0, rel=0.02)
    # A step of ours whose option PretrainConfig lacks is listed, not dropped silently.
    from vader_tf.training.pretrain import PretrainConfig

    if not hasattr(PretrainConfig(), "symmetric_loss"):
        assert "vader_one_direction" in result["skipped"]


def test_label_propagation_tiles_match_the_full_search(quick_results):
    results = quick_results["label_propagation"]["results"]["quick_12x20"]
    assert set(results["seconds_per_frame"]) == {"full_search", "tiles_8", "tiles_16"}
    assert all(value <= 1e-6 for value in results["max_abs_difference"].values())


@pytest.mark.parametrize("gathered_whole", [False, True], ids=["after", "before"])
def test_shuffle_bn_traffic_prediction_matches_a_two_replica_step(gathered_whole):
    """`traffic.all_gather_bytes` against the all-gathers a 2-replica step really makes
    (as the benchmark checks it), and VADeR's key bytes against the formula by hand."""
    from benchmarks.shuffle_bn_traffic import _gathered_whole, traced_all_gather_bytes
    from tests.training.helpers import build_small_model, synthetic_batch, two_replicas
    from vader_tf.training import traffic

    strategy = two_replicas()
    with strategy.scope():
        model = build_small_model("vader", queue_size=64, bn_groups=1, shuffle_bn=True, tiny=True)
    predicted = traffic.all_gather_bytes(model, 4, 64, 8, 2, gathered_whole)
    # Keys of both views of the global batch of 8: whole 16x16x8 maps, or 8 points.
    per_image = 16 * 16 * 8 if gathered_whole else 8 * 8
    assert predicted["shuffle_bn"]["keys"] == 2 * 8 * per_image * 4
    assert predicted["shuffle_bn"]["images"] == 2 * 8 * 64 * 64 * 3 * 4
    if gathered_whole:
        _gathered_whole(model)
    traced, gathers = traced_all_gather_bytes(strategy, model, synthetic_batch(8, num_points=8))
    assert traced == predicted["total"]
    assert gathers == (6 if gathered_whole else 8)
