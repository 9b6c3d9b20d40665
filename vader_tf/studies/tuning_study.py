"""Tuning VADeR on the tuning sets only: CamVid val and the 3 shared DAVIS sequences.

Each variant is the small study's VADeR run (`small_study.StudyConfig`: data, backbone,
view size, batch, steps, learning rate, queue, seed) with some of the settings issue 11
allows to tune changed (`VARIANTS`: InfoNCE temperature, matched points per image, key
pixels queued per image, decoder width). Variant runs live beside the study's own, in
`<run_dir>/seed<S>/vader_<variant>`, and the `default` variant *is* the study's VADeR
run (`vader`): pointed at the study's directories, the tuning reuses its run and JSONs
instead of training it again. With `start="moco"` every variant is the study's run of the
paper's setting instead (`vader_from_moco`: `continue_steps` from the backbone of the
seed's MoCo run, which must be in the run directory), in `vader_from_moco_<variant>`.

Every run is evaluated with the study's protocols on the two tuning benchmarks only (the
CamVid val linear probe and DAVIS label propagation), never on the BSDS500 val photos
of the correspondence protocol, which stay a check no setting was chosen on. Resumable
like the study: pretraining resumes from its run directory, and an evaluation whose
JSON exists is skipped (unless `force`). After every variant it rewrites `tuning.json`
and `tuning.md` (mean over the seeds done, difference to `default`) in `results_dir`,
where the study's report (`small_study.write_report`) shows them in a "Tuning" section.
"""

import dataclasses
import os
import shlex
from typing import ClassVar

import keras
import tensorflow as tf

from vader_tf import storage
from vader_tf.config_flags import option
from vader_tf.studies import small_study

# Variant name -> the `PretrainConfig` fields it changes from the study's VADeR run
# (temperature 0.2, 64 matched points and 16 queued key pixels per image, decoder 128,
# the pixel term alone).
VARIANTS = {
    "default": {},
    "temperature_0.1": dict(temperature=0.1),
    "temperature_0.4": dict(temperature=0.4),
    "points_128": dict(num_points=128),
    "queued_8": dict(queue_points_per_image=8),
    "queued_64": dict(queue_points_per_image=64),
    "decoder_256": dict(decoder_channels=256),
    # Method variants (issue 20): an image-level term beside the pixel term, and the
    # pixel term also at stride 16 (`vader_tf/training/vader.py`).
    "global_0.25": dict(global_loss_weight=0.25),
    "global_0.5": dict(global_loss_weight=0.5),
    "coarse_P4": dict(coarse_level="P4"),
    # The image-level term on the pooled decoder output (the served representation).
    "global_decoder_0.5": dict(global_loss_weight=0.5, global_level="decoder"),
    # PixPro's pixel-propagation module on the stride-4 queries, with PixPro's gamma.
    "propagation_2": dict(propagation_power=2.0),
    # For `start="moco"`: the MoCo backbone moves slower (or not at all) while the new
    # decoder and head train, so the decoder learns on stable features in its few steps.
    "backbone_lr_0.1": dict(backbone_learning_rate_scale=0.1),
    "backbone_frozen": dict(backbone_learning_rate_scale=0.0),
    # The backbone at the study's rate and the new decoder and head at 4x it, so the
    # decoder trains further in the continued run's few steps.
    "decoder_lr_4x": dict(
        base_learning_rate=4 * small_study.BUDGET["base_learning_rate"],
        backbone_learning_rate_scale=0.25,
    ),
}
# Where a variant starts (`TuningConfig.start`) -> the study's run (`small_study.RUNS`) it
# varies: from the seed's random initialisation, or continued from its MoCo run.
RANDOM_START = "random"
MOCO_START = "moco"
STUDY_RUNS = {RANDOM_START: "vader", MOCO_START: "vader_from_moco"}
# The tuning benchmarks (CamVid val, the shared DAVIS sequences).
EVALUATIONS = ("linear_probe", "davis_label_propagation")
# The held-out check (BSDS500 val photos), only for a variant already chosen.
HELD_OUT = "correspondence"
# Where issue 20's chosen method variant was carried to 3 seeds, per start, under the
# study's results folder; the study's report puts each folder's variants through the goal
# check (`carry_section`).
CARRY_DIRS = {RANDOM_START: "methods/carry", MOCO_START: "methods/from_moco"}
# Per start: the study's baselines of the goal check and the run whose `embedding` PCK@8
# is the floor.
GOAL_BASELINES = {RANDOM_START: ("moco", "random"), MOCO_START: ("moco_continued", "random")}
# The columns of the table, and the evaluation each comes from.
COLUMNS = {"mIoU": "CamVid val mIoU", "J&F": "DAVIS J&F"}


@dataclasses.dataclass
class TuningConfig(small_study.VariantsConfig):
    """Variants and locations; each field is a flag of `experiments/tune_small.py`. The
    budget fields default to the study's."""

    VARIANTS: ClassVar[dict] = VARIANTS

    run_dir: str = option(
        small_study.StudyConfig.run_dir, "Runs go to <run_dir>/seed<S>/vader_<variant>."
    )
    results_dir: str = option(
        small_study.StudyConfig.results_dir,
        "JSONs in <results_dir>/seed<S>/, tuning.json and tuning.md in <results_dir>.",
    )
    variants: tuple[str, ...] = option(tuple(VARIANTS), f"Variants, from {tuple(VARIANTS)}.")
    start: str = option(
        RANDOM_START,
        f"Where every variant starts: {RANDOM_START!r} (the seed's initialisation, the study's "
        f"`vader` run) or {MOCO_START!r} (the paper's setting: `continue_steps` from the "
        "backbone of the seed's MoCo run in --run_dir, the study's `vader_from_moco` run).",
    )
    seeds: tuple[int, ...] = option((0,), "Seeds of every variant.")
    continue_steps: int = option(
        small_study.StudyConfig.continue_steps, "Steps of a run continued from MoCo (the study's)."
    )
    layers: tuple[str, ...] = option((small_study.SERVED_TAP,), small_study.TAPS_HELP)
    davis_image_size: int = option(small_study.StudyConfig.davis_image_size, "DAVIS short side.")
    davis_max_frames: int | None = option(None, "Use only the first N frames of each sequence.")
    held_out: bool = option(
        False,
        "Also evaluate on the BSDS500 val correspondence photos: the held-out check of "
        "variants already chosen on the tuning sets (when carrying one), never for choosing.",
    )

    def seed_list(self):
        return self.seeds

    def study(self):
        return super().study(
            continue_steps=self.continue_steps,
            layers=self.layers,
            davis_image_size=self.davis_image_size,
            davis_max_frames=self.davis_max_frames,
        )

    def validate(self):
        if self.start not in STUDY_RUNS:
            raise ValueError(f"--start={self.start!r}: expected one of {tuple(STUDY_RUNS)}.")
        if self.start == MOCO_START:
            study = self.study()
            for seed in self.seeds:
                moco = os.path.join(study.seed_dir(seed), MOCO_START)
                if small_study.completed_steps(moco) < study.train_steps:
                    raise ValueError(
                        f"--start=moco: {moco} holds no finished MoCo run (make it with "
                        f"experiments/reproduce_small.py --seeds={seed} --run_dir={self.run_dir})."
                    )
        super().validate()

    def variant_config_to_validate(self, variant):
        config = super().variant_config_to_validate(variant)
        # The start weights file is written from the MoCo run (checked above) when the
        # seed's runs begin.
        return dataclasses.replace(config, init_weights=None)

    def run_name(self, variant):
        return run_name(self.start, variant)

    def pretrain_config(self, variant, seed):
        model_dir = os.path.join(self.study().seed_dir(seed), self.run_name(variant))
        return self.variant_pretrain_config(
            variant, seed, model_dir, run=STUDY_RUNS[self.start]
        )


def run_name(start, variant):
    """The run of `variant` starting from `start`: the study's own (`vader` or
    `vader_from_moco`) for `default`, else that name with the variant's appended."""
    study_run = STUDY_RUNS[start]
    return study_run if variant == "default" else f"{study_run}_{variant}"


def run(config, command):
    """Pretrains and evaluates every variant for every seed (resuming); after each one,
    rewrites `tuning.json` and `tuning.md` in `results_dir` with the variants done so far.
    Returns the last JSON's dict."""
    study = config.study()
    evaluations = small_study.Evaluations(study)
    final_losses = {}
    for seed in config.seeds:
        if config.start == MOCO_START:
            small_study.save_start_weights(study, seed, MOCO_START)
        for variant in config.variants:
            name = config.run_name(variant)
            summary = small_study.pretrain_and_summarize(
                config.pretrain_config(variant, seed),
                small_study.pretrain_summary_path(study.seed_results(seed), name),
                command_flags=small_study.PRETRAIN_FLAGS + tuple(VARIANTS[variant]),
            )
            keras.backend.clear_session()
            final_losses.setdefault(variant, []).append(summary["final_loss"])
            small_study.evaluate_encoders(
                evaluations, {name: os.path.join(study.seed_dir(seed), name)}, config.layers,
                seed, study.seed_results(seed), force=config.force,
                which=EVALUATIONS + ((HELD_OUT,) if config.held_out else ()),
            )
            payload = write_tables(config, command, final_losses)
    return payload


def write_tables(config, command, final_losses):
    """Writes `tuning.json` and `tuning.md` for the variants in `final_losses` (their
    runs done), from the result JSONs of the seeds done."""
    results = small_study.aggregate(
        config.study(), [config.run_name(variant) for variant in final_losses]
    )
    variants = {
        variant: {
            "settings": VARIANTS[variant],
            "final_loss": losses,
            "taps": {
                layer: {column: results[config.run_name(variant), layer][column]
                        for column in COLUMNS}
                for layer in config.layers
            },
        }
        for variant, losses in final_losses.items()
    }
    payload = {"command": list(command), "config": dataclasses.asdict(config), "variants": variants}
    path = os.path.join(config.results_dir, small_study.TUNING_FILE)
    storage.write_json_atomic(path + ".json", payload)
    storage.write_atomic(path + ".md", table(variants, config.seeds, config.start))
    return payload


def rewrite_table(results_dir):
    """Rewrites `tuning.md` in `results_dir` from its `tuning.json` (no training); returns
    `(the JSON's dict, the table)`."""
    path = os.path.join(results_dir, small_study.TUNING_FILE)
    payload = storage.read_json(path + ".json")
    for variant in payload["variants"].values():
        if "features" in variant["taps"] and "note" not in payload:
            raise ValueError(
                f"{path}.json: tap `features` without a serving contract version (before "
                "contract 2 it was the projection head's output, now `embedding`)."
            )
    layers = payload["config"]["layers"]
    variants = {  # Variants and taps in the order asked, as `write_tables` has them.
        variant: dict(
            payload["variants"][variant],
            taps={
                layer: payload["variants"][variant]["taps"][layer]
                for layer in sorted(
                    payload["variants"][variant]["taps"],
                    key=lambda layer: layers.index(layer) if layer in layers else len(layers),
                )
            },
        )
        for variant in payload["config"]["variants"]
        if variant in payload["variants"]
    }
    markdown = table(
        variants, payload["config"]["seeds"], payload["config"].get("start", RANDOM_START)
    )
    storage.write_atomic(path + ".md", markdown)
    return payload, markdown


def table(variants, seeds, start=RANDOM_START):
    """Markdown table: per variant and tap, the mean (± std) over `seeds` of each column
    and its difference to the `default` variant's mean, when that was run; runs continued
    from MoCo (`start`) say so in the first line."""
    default = variants.get("default")
    header = ["variant", "changed", "tap", "final loss"]
    for title in COLUMNS.values():
        header += [title, "vs default"]
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; "
        + ("continued from each seed's MoCo run; " if start == MOCO_START else "")
        + "mean ± std over the seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for variant, v in variants.items():
        changed = ", ".join(f"{k}={value}" for k, value in v["settings"].items()) or "-"
        for layer, row in v["taps"].items():
            cells = [variant, changed, f"`{layer}`", small_study.format_cell(v["final_loss"])]
            for column in COLUMNS:
                cells.append(small_study.format_cell(row[column]))
                if default is None:
                    cells.append("-")
                else:
                    difference = (
                        small_study.mean_std(row[column])[0]
                        - small_study.mean_std(default["taps"][layer][column])[0]
                    )
                    cells.append(f"{difference:+.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def carry_section(study_config):
    """Markdown lines of the study report's section on the method variants carried to
    several seeds (`CARRY_DIRS` under the study's `results_dir`; none when absent): per
    start, the command, the tuning table, and each variant's goal check against the
    study's baselines, from the same seeds."""
    lines = []
    for start, subdir in CARRY_DIRS.items():
        results_dir = os.path.join(study_config.results_dir, subdir)
        if not tf.io.gfile.exists(os.path.join(results_dir, small_study.TUNING_FILE + ".json")):
            continue
        payload, markdown = rewrite_table(results_dir)
        study_run = STUDY_RUNS[start]
        names = {
            run_name(start, variant): variant
            for variant in payload["variants"]
            if variant != "default"
        }
        aggregated = small_study.aggregate_sources([
            (study_config, (study_run, *GOAL_BASELINES[start])),
            (dataclasses.replace(study_config, results_dir=results_dir), tuple(names)),
        ])
        setting = "continued from MoCo" if start == MOCO_START else "from random init"
        lines += [
            f"### {setting[0].upper()}{setting[1:]}",
            "",
            "```",
            shlex.join(payload["command"]),
            "```",
            "",
            markdown.strip(),
            "",
        ]
        for name, variant in names.items():
            changed = ", ".join(f"`--{k}={v}`" for k, v in VARIANTS[variant].items())
            lines += [
                f"Goal check of `{variant}` ({changed}), {setting}, against the study's "
                "baselines of the same seeds:",
                "",
                *small_study.goal_check(
                    aggregated, name, GOAL_BASELINES[start],
                    label=f"{small_study.ENCODER_NAMES[study_run]} {variant}", floor=study_run,
                ),
                "",
            ]
    if not lines:
        return []
    return [
        "## Method variant carried",
        "",
        "The method variant chosen on the tuning sets (seed 0), carried to the study's seeds "
        "in both settings, beside the study's default run (`default`). The tables hold the "
        "tuning sets; the goal check adds the BSDS500 correspondence photos (held out: the "
        "variant was chosen before they were evaluated: `--held_out`).",
        "",
        *lines,
    ]
