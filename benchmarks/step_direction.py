"""Symmetric against one-direction train step (`symmetric_loss`): VADeR and MoCo on the
main job's shape (ResNet-18, 96 px, batch 16), float32, timed round by round in one
process so every step sees the same machine load. Reports step time, images (pairs) per
second, FLOPs per step (graph counter) and each method's one-direction speed-up.

    python -m benchmarks.step_direction [--quick]
"""

from benchmarks import common

NAME = "step_direction"
STEPS = {
    "vader_symmetric": dict(method="vader", symmetric_loss=True),
    "vader_one_direction": dict(method="vader", symmetric_loss=False),
    "moco_symmetric": dict(method="moco", symmetric_loss=True),
    "moco_one_direction": dict(method="moco", symmetric_loss=False),
}


def run(quick):
    if quick:
        fields, repeats = dict(image_size=64, batch_size=4), 2
    else:
        fields, repeats = dict(backbone="resnet18", image_size=96, batch_size=16), 9
    steps, flops, batch, config = {}, {}, None, None
    for name, step_fields in STEPS.items():
        config, steps[name], batch, graph = common.traced_train_step(
            batch, **fields, **step_fields
        )
        flops[name] = common.graph_flops(graph)["from_shapes"]
    times = common.time_interleaved(steps, warmup=1, repeats=repeats)
    results = {
        name: {
            "step_s": times[name]["median_s"],
            "images_per_s": config.batch_size / times[name]["median_s"],
            "step_flops": flops[name],
        }
        for name in STEPS
    }
    for method in ("vader", "moco"):
        one, sym = results[f"{method}_one_direction"], results[f"{method}_symmetric"]
        results[f"{method}_one_direction_speedup"] = sym["step_s"] / one["step_s"]
        results[f"{method}_one_direction_flop_ratio"] = one["step_flops"] / sym["step_flops"]
    results["timing"] = times
    return common.config_summary(config), results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
