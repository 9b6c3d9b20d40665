"""Speed against quality (issue 13 §1-2): the small reproduction's VADeR run pretrained in
float32 and in bfloat16, and with the one-direction step, same seed and images seen.

Each variant is the study's VADeR pretraining (`small_study.StudyConfig` settings: data,
backbone, view size, batch, learning rate, queue) for `train_steps` steps, changed only
in `PretrainConfig.mixed_precision` / `symmetric_loss` (`VARIANTS`). The one-direction
variant runs the same steps at the same batch, so it sees the same images with half
the backbone work. For each variant this writes its loss curve (from the run's
TensorBoard events), wall time per training step (median over the logged intervals,
from the loop's images/s, pipeline included) and the CamVid val linear-probe mIoU at
the `decoder` tap (served by contract 2; the study's probe, `small_study.Evaluations`),
then one JSON and a markdown table comparing them. Every variant is probed in float32: a run's saved
architecture does not record its training precision (`DenseEncoder.get_config`).

Resumable like the study: pretraining resumes from its run directory, and a variant
whose probe JSON exists is not probed again (unless `force`).
"""

import dataclasses
import os
import statistics
from typing import ClassVar

import keras
from absl import logging

from vader_tf import storage
from vader_tf.config_flags import inherited_option, option
from vader_tf.eval.encoders import load_feature_extractor
from vader_tf.studies import small_study
from vader_tf.training.pretrain import PretrainConfig

# Variant name -> the `PretrainConfig` fields it changes from the study's VADeR run.
VARIANTS = {
    "float32_symmetric": dict(mixed_precision="none", symmetric_loss=True),
    "bfloat16_symmetric": dict(mixed_precision="mixed_bfloat16", symmetric_loss=True),
    "float32_one_direction": dict(mixed_precision="none", symmetric_loss=False),
}
# The output probed: `decoder`, the served `features` of serving contract 2 when this
# study was last run (contract 3 serves `small_study.SERVED_TAP`). The committed results
# of issue 13 were probed at the projection head's output (`embedding`, then called
# `features`; their JSON's `note` says so).
LAYER = "decoder"


@dataclasses.dataclass
class SpeedQualityConfig(small_study.VariantsConfig):
    """Budget and locations; each field is a flag of `experiments/speed_quality.py`."""

    VARIANTS: ClassVar[dict] = VARIANTS

    run_dir: str = option("runs/speed_quality", "Runs go to <run_dir>/<variant>.")
    results_dir: str = option("results/speed_quality", "Result JSONs and the table.")
    train_steps: int = small_study.budget_option("train_steps", "Every variant's.", 300)
    variants: tuple[str, ...] = option(tuple(VARIANTS), f"Variants, from {tuple(VARIANTS)}.")
    seed: int = inherited_option(
        PretrainConfig, "seed", note="Every variant's; also its initialisation and probe's."
    )

    def seed_list(self):
        return (self.seed,)

    def pretrain_config(self, variant, seed=None):
        del seed  # Every variant uses `self.seed`.
        return self.variant_pretrain_config(
            variant, self.seed, os.path.join(self.run_dir, variant)
        )


def step_seconds(history, batch_size):
    """Median wall seconds per training step over the logged intervals (the first one,
    which includes tracing, left out when there are others)."""
    rates = [entry["images_per_s"] for entry in history if entry.get("images_per_s")]
    if len(rates) > 1:
        rates = rates[1:]
    return batch_size / statistics.median(rates) if rates else None


def probe(config, variant, evaluations):
    """The CamVid val linear probe of one variant's encoder at the `LAYER` tap."""
    path = small_study.result_path(config.results_dir, "linear_probe", variant, LAYER)
    if not config.force and evaluations.is_done(path, "linear_probe"):
        return storage.read_json(path)["metrics"]
    spec = config.pretrain_config(variant).model_dir
    extractor = load_feature_extractor(spec, seed=config.seed, layer=LAYER)
    metrics = small_study.evaluate_and_write(
        evaluations, "linear_probe", extractor, spec, LAYER, config.seed, path,
        training=small_study.encoder_training(config.results_dir, variant),
    )
    keras.backend.clear_session()
    return metrics


def run(config, command):
    """Pretrains and probes every variant (resuming), writes `speed_quality.json` and
    `speed_quality.md` in `results_dir`; returns the JSON's dict."""
    evaluations = small_study.Evaluations(config.study())
    variants = {}
    for variant in config.variants:
        pretrain_config = config.pretrain_config(variant)
        summary = small_study.pretrain_and_summarize(
            pretrain_config,
            small_study.pretrain_summary_path(config.results_dir, variant),
        )
        keras.backend.clear_session()
        history = summary["history"]
        variants[variant] = {
            "settings": VARIANTS[variant],
            "train_steps": summary["train_steps"],
            "images_seen": summary["train_steps"] * pretrain_config.batch_size,
            "seconds_per_step": step_seconds(history, pretrain_config.batch_size),
            "final_loss": summary["final_loss"],
            "loss_curve": [[entry["step"], entry["loss"]] for entry in history],
            "camvid_val_miou": probe(config, variant, evaluations)["mean_iou"],
        }
        logging.info("%s: %s", variant, {k: v for k, v in variants[variant].items() if k != "loss_curve"})
    payload = {
        "command": list(command),
        "config": dataclasses.asdict(config),
        "layer": LAYER,
        "variants": variants,
    }
    storage.write_json_atomic(os.path.join(config.results_dir, "speed_quality.json"), payload)
    storage.write_atomic(os.path.join(config.results_dir, "speed_quality.md"), table(variants))
    return payload


def table(variants):
    """Markdown table of the variants, with speed and mIoU relative to the first one."""
    first = next(iter(variants.values()))
    lines = [
        "| variant | steps | images seen | s/step | speed-up | final loss | CamVid val mIoU | "
        "mIoU - first |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in variants.items():
        speedup = (
            f"{first['seconds_per_step'] / v['seconds_per_step']:.2f}x"
            if first["seconds_per_step"] and v["seconds_per_step"]
            else "-"
        )
        seconds = f"{v['seconds_per_step']:.3f}" if v["seconds_per_step"] else "-"
        loss = f"{v['final_loss']:.3f}" if v["final_loss"] is not None else "-"
        lines.append(
            f"| {name} | {v['train_steps']} | {v['images_seen']} | {seconds} | {speedup} | "
            f"{loss} | {v['camvid_val_miou']:.4f} | "
            f"{v['camvid_val_miou'] - first['camvid_val_miou']:+.4f} |"
        )
    return "\n".join(lines) + "\n"
