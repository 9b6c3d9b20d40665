"""The main job (`experiments/pretrain.py` defaults: VADeR, ResNet-18, 96 px, batch 16 on
the embedded samples) with and without the decoded-image cache (`--cache_decoded_mb`):
end-to-end images per second, pipeline included, as the training loop reports them.

Each run is a fresh process (its own TensorFlow and run directory); runs alternate cache
on / cache off so that both see the same drift of the machine's load. A run's figure is
the median of its logged intervals after the first (which holds tracing).

    python -m benchmarks.decoded_cache [--quick]
"""

import statistics
import tempfile

from benchmarks import common

NAME = "decoded_cache"
MODULE = "benchmarks.decoded_cache"


def worker(settings):
    """Child process: one pretraining run; prints its images/s per logged interval."""
    from vader_tf.training.pretrain import PretrainConfig, pretrain

    with tempfile.TemporaryDirectory() as model_dir:
        config = PretrainConfig(model_dir=f"{model_dir}/run", verbose=0, **settings)
        _, history = pretrain(config)
    common.print_json_line({"images_per_s": [h["images/s"] for h in history]})


def run(quick):
    if quick:
        fields = dict(image_size=64, batch_size=4, train_steps=4, log_every=2, checkpoint_every=4)
        rounds = 1
    else:
        fields = dict(train_steps=60, log_every=10, checkpoint_every=60)
        rounds = 2
    modes = {"cache_on": 512, "cache_off": 0}
    runs = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, megabytes in modes.items():
            result = common.run_worker(MODULE, {**fields, "cache_decoded_mb": megabytes})
            if "error" in result:
                raise RuntimeError(f"{mode} run failed: {result}")
            intervals = result["images_per_s"][1:] or result["images_per_s"]
            runs[mode].append({"intervals": intervals, "median": statistics.median(intervals)})
    results = {
        mode: {
            "images_per_s": statistics.median(r["median"] for r in runs[mode]),
            "runs": runs[mode],
        }
        for mode in modes
    }
    results["cache_on_over_off"] = (
        results["cache_on"]["images_per_s"] / results["cache_off"]["images_per_s"]
    )
    per_round = [on["median"] / off["median"] for on, off in zip(runs["cache_on"], runs["cache_off"])]
    results["per_round_on_over_off"] = per_round
    return {**fields, "rounds": rounds, "data": "samples"}, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__, worker=worker)
