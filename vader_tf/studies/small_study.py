"""The small-scale study behind RESULTS.md: VADeR vs MoCo v2 vs random init, over seeds.

This is the orchestration behind `experiments/reproduce_small.py` (the study harness, an
importable module shared with `tuning_study`, `speed_quality_study` and
`compute_curve_study`). For every seed it

1. pretrains VADeR and MoCo v2 from the same random initialisation (the seed's), on
   BSDS500 train + test photos and the CamVid train frames (no labels);
2. runs the paper's setting at small scale: both continue for `continue_steps` steps from
   the MoCo run's backbone (VADeR initialised from MoCo, against MoCo continued for the
   same steps: equal total compute);
3. evaluates every encoder (the four runs, the MoCo checkpoint they start from and the
   random initialisation) at every tap of `layers` with the frozen-feature protocols of
   `vader_tf.eval`: CamVid linear probe (mIoU on val), DAVIS-2016 label propagation
   (J, F), correspondence under known warps of BSDS500 val photos (PCK);

then writes mean +- std over the seeds done so far. BSDS500 val photos are kept out of
pretraining because the correspondence protocol uses them.

Every step is resumable: pretraining resumes from its run directory and an evaluation
whose result JSON exists is skipped (unless `force`) if the JSON records the study's
protocol (`vader_tf.eval.protocols`, shrunk by `StudyConfig.protocols`) or none (files
written before protocols were recorded). Each result JSON records, as its `command`, the
standalone `experiments/` command that computes the same numbers. Results of an earlier
version of the code can be kept in `before_dir` (same file names, one seed) and are shown
as their own rows. The report also shows the tuning table and the compute curve when their
JSONs are in `results_dir` (`tuning.json`; `compute_curve/compute_curve.json`).
"""

import dataclasses
import os
import platform
import shlex
import time
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.config_flags import inherited_option, option, to_argv
from vader_tf.data.segmentation import load_image, load_segmentation_split, resize_and_crop_image
from vader_tf.eval import visualize
from vader_tf.eval.correspondence import evaluate_correspondence, list_images, load_images
from vader_tf.eval.davis import evaluate_davis, list_sequences
from vader_tf.eval.encoders import (
    COMBINE,
    LAYERS,
    check_layer,
    layer_parts,
    load_feature_extractor,
)
from vader_tf.eval.linear_probe import run_linear_probe
from vader_tf.eval.protocols import CamVidProbeProtocol, CorrespondenceProtocol, DavisProtocol
from vader_tf.eval.reporting import same_protocol, write_results
from vader_tf.models.backbone import PYRAMID_LEVELS
from vader_tf.models.encoder import FUSED_TAP
from vader_tf.run_dir import RunDir, load_encoder
from vader_tf.serving_contract import CONTRACT_VERSION
from vader_tf.training import precision
from vader_tf.training.pretrain import PretrainConfig, pretrain

# The pretraining runs of one seed: name -> (method, start). `start` None is the seed's
# random initialisation; "moco" is the backbone of that seed's MoCo run.
RUNS = {
    "vader": ("vader", None),
    "moco": ("moco", None),
    "vader_from_moco": ("vader", "moco"),
    "moco_continued": ("moco", "moco"),
}
# Every evaluated encoder, in table order.
ENCODER_NAMES = {
    "vader": "VADeR",
    "moco": "MoCo v2",
    "random": "random init",
    "vader_from_moco": "VADeR from MoCo",
    "moco_continued": "MoCo v2 continued",
}
EVALUATIONS = ("linear_probe", "davis_label_propagation", "correspondence")
# The taps the study evaluates by default, named unambiguously: `embedding` is the
# projection head's output (the training embedding), `decoder` the L2-normalised FPN output
# (served as `features` by contract 2), `decoder+P4@0.25` the two joined (`FUSED_TAP`,
# served as `features` since contract 3, `vader_tf.serving_contract`). The tap `features`
# (the served output) is not a default: its meaning changes with the contract version
# (`check_tap`).
SERVED_TAP = FUSED_TAP
# The output served as `features` when issue 20 set its goals (contract 1): its PCK@8 is
# the goal's floor.
ISSUE_FEATURES_TAP = "embedding"
STUDY_LAYERS = ("embedding", "decoder", "P4", SERVED_TAP)
TAPS_HELP = (
    f"Taps evaluated, from {LAYERS} or several joined by {COMBINE!r} (`{SERVED_TAP}` = the "
    "served `features` since serving contract 3, `decoder` under contract 2)."
)
# The tap of the PCA pictures.
PCA_LAYER = "embedding"
# The study's budget: `PretrainConfig` fields that are flags of the study too (declared by
# `budget_option`), with the study's defaults. Pinned here rather than inherited, so that
# every seed measures the same budget even if `PretrainConfig`'s defaults change; the
# study trains longer than `PretrainConfig`'s default and checkpoints less often.
BUDGET = {
    "backbone": "resnet18",
    "image_size": 96,
    "batch_size": 16,
    "train_steps": 1200,
    "base_learning_rate": 0.5,
    "checkpoint_every": 100,
}
# The `PretrainConfig` fields the study sets; the others keep their defaults.
PRETRAIN_FLAGS = (
    "model_dir", "data", "method", *BUDGET, "queue_size", "seed", "init_weights",
    "mixed_precision", "symmetric_loss",
)
# The report shows its command without `--report_only` (in any spelling: it is the command
# that makes the runs and evaluations).
REPORT_ONLY_FLAGS = ("--report_only", "--noreport_only")
# Hand-written findings in the results folder, included in the report when present.
FINDINGS_FILE = "findings.md"
# The tuning harness's table and JSON (`tuning_study`), without their extensions.
TUNING_FILE = "tuning"
PRETRAINING_FOLDERS = ("bsds500/images/train", "bsds500/images/test", "camvid/train")


def budget_option(name, note="", default=None):
    """The study config field of `PretrainConfig` field `name` (one of `BUDGET`): its
    type (annotate it so) and help text, followed by `note`; default: the study's budget
    (`default`, when given, for a harness with another budget)."""
    default = BUDGET[name] if default is None else default
    return inherited_option(PretrainConfig, name, default, note)


def budget_fields(config):
    """`{name: value}` of the `BUDGET` fields a study config has."""
    return {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if field.name in BUDGET
    }


@dataclasses.dataclass
class StudyConfig:
    """Budget and locations of the study; each field is a flag of `reproduce_small.py`."""

    data_root: str = option("", "Folder holding bsds500/, camvid/ and davis2016/.")
    run_dir: str = option("runs/reproduce_small", "Runs go to <run_dir>/seed<S>/<run>.")
    results_dir: str = option("results", "Result JSONs (<results_dir>/seed<S>/) and figures.")
    report: str = option("RESULTS.md", "Markdown report, rewritten after every seed.")
    notes: str | None = option(
        None, "Markdown findings for the report (default: <results_dir>/findings.md)."
    )
    before_dir: str | None = option(
        None, "Result JSONs of an earlier code version (one seed), shown as their own rows."
    )
    before_label: str = option("before", "Label of the --before_dir rows.")
    # Pretraining (the same for every run).
    backbone: str = budget_option("backbone", "Every run's.")
    image_size: int = budget_option("image_size")
    batch_size: int = budget_option("batch_size")
    train_steps: int = budget_option(
        "train_steps", "The study's: VADeR's and MoCo's from random init."
    )
    base_learning_rate: float = budget_option("base_learning_rate")
    checkpoint_every: int = budget_option("checkpoint_every")
    vader_queue_size: int = option(4096, "VADeR's queue of key pixels.")
    # MoCo's queue must stay well below the pretraining pool (767 images), or a query
    # meets stale keys of its own image as negatives.
    moco_queue_size: int = option(256, "MoCo's queue of key images (keep it below the pool).")
    seeds: tuple[int, ...] = option((0, 1, 2), "Seeds: initialisation, data order, evaluations.")
    continue_steps: int = option(
        600, "Paper's setting: VADeR and MoCo continue this many steps from MoCo (0 = off)."
    )
    # Evaluation.
    layers: tuple[str, ...] = option(STUDY_LAYERS, TAPS_HELP)
    probe_image_size: int = option(CamVidProbeProtocol.image_size, "CamVid short side.")
    probe_steps: int = option(1000, "Linear-probe optimisation steps.")
    probe_limit: int | None = option(None, "Use only the first N CamVid frames of each split.")
    davis_image_size: int = option(192, "DAVIS short side.")
    davis_max_frames: int | None = option(None, "Use only the first N frames of each sequence.")
    correspondence_image_size: int = option(
        CorrespondenceProtocol.image_size, "BSDS500 short side."
    )
    correspondence_images: int = option(100, "BSDS500 val photos warped.")
    force: bool = option(False, "Recompute evaluations whose result JSON exists.")
    report_only: bool = option(
        False, "Only rewrite the report and figures from the result JSONs present."
    )
    verbose: int = inherited_option(PretrainConfig, "verbose")

    def validate(self):
        for layer in self.layers:
            try:
                check_layer(layer)
            except ValueError as error:
                raise ValueError(f"--layers: {error}") from None
        if not self.seeds:
            raise ValueError("--seeds must name at least one seed.")
        for name in ("train_steps", "batch_size", "image_size", "probe_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        self.protocols()  # Validates the evaluation settings.
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint_every must be positive, got {self.checkpoint_every}.")
        if self.continue_steps < 0:
            raise ValueError(f"--continue_steps must be >= 0, got {self.continue_steps}.")
        for folder in ("camvid", "davis2016", *PRETRAINING_FOLDERS):
            if not tf.io.gfile.isdir(os.path.join(self.data_root, folder)):
                raise ValueError(
                    f"--data_root={self.data_root!r} has no {folder}/ (expected the layout "
                    "of ../shared/data: bsds500/, camvid/, davis2016/)."
                )

    def protocols(self):
        """`{evaluation: protocol}`: the protocols of `vader_tf.eval.protocols` with the
        study's image sizes and probe steps; every other setting at its default."""
        return {
            "linear_probe": CamVidProbeProtocol(
                image_size=self.probe_image_size, steps=self.probe_steps
            ),
            "davis_label_propagation": DavisProtocol(image_size=self.davis_image_size),
            "correspondence": CorrespondenceProtocol(image_size=self.correspondence_image_size),
        }

    def seed_dir(self, seed):
        return os.path.join(self.run_dir, f"seed{seed}")

    def seed_results(self, seed):
        return os.path.join(self.results_dir, f"seed{seed}")

    def runs(self):
        """The pretraining runs of a seed, in the order they are made."""
        return [name for name, (_, start) in RUNS.items() if start is None or self.continue_steps]

    def start_weights(self, seed, start):
        """Backbone weights file a continued run starts from (written by `run_seed`)."""
        return None if start is None else os.path.join(
            self.seed_dir(seed), f"{start}_backbone.weights.h5"
        )

    def pretrain_config(self, name, seed):
        method, start = RUNS[name]
        budget = budget_fields(self)
        if start is not None:
            budget["train_steps"] = self.continue_steps
        return PretrainConfig(
            model_dir=os.path.join(self.seed_dir(seed), name),
            data=pretraining_data_spec(self.data_root),
            method=method,
            **budget,
            queue_size=self.vader_queue_size if method == "vader" else self.moco_queue_size,
            seed=seed,
            init_weights=self.start_weights(seed, start),
            # Pinned, not inherited: all seeds measure one method even if the defaults
            # change (the study's runs are float32 and symmetric).
            mixed_precision="none",
            symmetric_loss=True,
            verbose=self.verbose,
        )

    def encoders(self, seed):
        """`{name: encoder spec}` of every encoder evaluated for `seed`."""
        specs = {name: os.path.join(self.seed_dir(seed), name) for name in self.runs()}
        specs["random"] = f"random:{self.backbone}"
        return {name: specs[name] for name in ENCODER_NAMES if name in specs}


@dataclasses.dataclass
class VariantsConfig:
    """Base of the harnesses that rerun the study's VADeR run (or its MoCo run) with some
    `PretrainConfig` fields changed (`speed_quality_study`, `tuning_study`,
    `compute_curve_study`): locations, the study's budget and protocols, resuming. A
    subclass names its variants in `VARIANTS` (name -> the fields it changes), adds a
    `variants` field, and says where a variant's run goes (`pretrain_config`) and with
    which seeds (`seed_list`)."""

    VARIANTS: ClassVar[dict] = {}

    data_root: str = option("", "Folder holding bsds500/, camvid/ and davis2016/.")
    run_dir: str = option("runs", "Where the variants' runs go.")
    results_dir: str = option("results", "Result JSONs and the table.")
    train_steps: int = budget_option("train_steps", "Every variant's.")
    image_size: int = budget_option("image_size")
    batch_size: int = budget_option("batch_size")
    checkpoint_every: int = budget_option("checkpoint_every")
    probe_image_size: int = option(StudyConfig.probe_image_size, "CamVid short side (the study's).")
    probe_steps: int = option(StudyConfig.probe_steps, "Linear-probe steps (the study's).")
    probe_limit: int | None = option(None, "Use only the first N CamVid frames of each split.")
    force: bool = option(False, "Recompute evaluations whose result JSON exists.")
    verbose: int = inherited_option(PretrainConfig, "verbose")

    def seed_list(self):
        raise NotImplementedError

    def pretrain_config(self, variant, seed):
        raise NotImplementedError

    def validate(self):
        unknown = set(self.variants) - set(self.VARIANTS)
        if unknown or not self.variants:
            raise ValueError(
                f"--variants={list(self.variants)}: expected some of {tuple(self.VARIANTS)}."
            )
        self.study().validate()  # Seeds, steps, sizes, taps and the data layout.
        for variant in self.variants:  # The changed settings themselves.
            self.variant_config_to_validate(variant).validate()

    def variant_config_to_validate(self, variant):
        """The `PretrainConfig` whose `validate` checks `variant`'s settings."""
        return self.pretrain_config(variant, self.seed_list()[0])

    def study(self, **fields):
        """The `StudyConfig` whose VADeR run and protocols every variant shares; `fields`
        sets the subclass's own study settings."""
        return StudyConfig(
            data_root=self.data_root,
            run_dir=self.run_dir,
            results_dir=self.results_dir,
            **budget_fields(self),
            seeds=tuple(self.seed_list()),
            probe_image_size=self.probe_image_size,
            probe_steps=self.probe_steps,
            probe_limit=self.probe_limit,
            force=self.force,
            verbose=self.verbose,
            **fields,
        )

    def variant_pretrain_config(self, variant, seed, model_dir, run="vader", **fields):
        """The study's run `run` (one of `RUNS`; its VADeR run by default) for `seed`, with
        `variant`'s fields and `fields`, in `model_dir`."""
        return dataclasses.replace(
            self.study().pretrain_config(run, seed),
            model_dir=model_dir,
            **fields,
            **self.VARIANTS[variant],
        )


def pretraining_data_spec(data_root):
    return ",".join(f"folder:{os.path.join(data_root, f)}" for f in PRETRAINING_FOLDERS)


def pretraining_pool_size(data_root):
    return sum(len(list_images(os.path.join(data_root, f))) for f in PRETRAINING_FOLDERS)


def read_history(model_dir):
    """Per-log-step metrics of a run from its TensorBoard events, sorted by step.

    Events of all sessions of a resumed run are merged; a step logged twice (a session
    killed after logging but before its checkpoint) keeps the later value.
    """
    by_step = {}
    for path in RunDir(model_dir).event_files():
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tensor.tensor_shape.dim:  # Not a scalar (e.g. an image summary).
                    continue
                scalar = float(tf.make_ndarray(value.tensor))
                by_step.setdefault(int(event.step), {})[value.tag] = scalar
    return [{"step": step, **metrics} for step, metrics in sorted(by_step.items())]


def completed_steps(model_dir):
    """The step of the newest checkpoint in a run directory (0 if none)."""
    return RunDir(model_dir).latest_step()


def run_pretraining(config, name, seed):
    """Pretrains (or resumes) one run; returns its summary, also written as JSON."""
    return pretrain_and_summarize(
        config.pretrain_config(name, seed),
        pretrain_summary_path(config.seed_results(seed), name),
    )


def pretrain_and_summarize(pretrain_config, summary_path, command_flags=PRETRAIN_FLAGS):
    """Pretrains (or resumes) `pretrain_config`'s run; returns its summary (final loss,
    seconds in training steps, session wall times, logged history), also written as
    JSON to `summary_path` with the equivalent `experiments/pretrain.py` command (its
    `command_flags`)."""
    sessions = []
    if tf.io.gfile.exists(summary_path):
        sessions = storage.read_json(summary_path)["metrics"]["session_seconds"]
    if completed_steps(pretrain_config.model_dir) < pretrain_config.train_steps:
        started = time.perf_counter()
        _, new_history = pretrain(pretrain_config)
        if new_history:
            sessions.append(time.perf_counter() - started)
        keras.backend.clear_session()
    history = read_history(pretrain_config.model_dir)
    # Time spent in training steps, from the logged throughput of each log interval.
    steps = [0] + [entry["step"] for entry in history]
    train_seconds = sum(
        (step - previous) * pretrain_config.batch_size / entry["images_per_s"]
        for previous, step, entry in zip(steps, steps[1:], history)
        if entry.get("images_per_s")
    )
    metrics = {
        "train_steps": pretrain_config.train_steps,
        "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": train_seconds,
        "session_seconds": sessions,
        "history": history,
    }
    command = ["experiments/pretrain.py"] + [
        f"--{flag}={getattr(pretrain_config, flag)}"
        for flag in command_flags
        if getattr(pretrain_config, flag) is not None
    ]
    write_results(
        summary_path, "pretraining", pretrain_config.model_dir, metrics,
        config=dataclasses.asdict(pretrain_config), argv=command,
        training=training_record(pretrain_config),
    )
    return metrics


def training_record(pretrain_config):
    """`{"mixed_precision": resolved Keras policy, "symmetric_loss": bool}` of a run: what
    its numbers depend on beyond the seed, recorded in every result JSON of the study."""
    return {
        "mixed_precision": precision.resolve(pretrain_config.mixed_precision),
        "symmetric_loss": pretrain_config.symmetric_loss,
    }


def recorded_training(result):
    """The `training_record` of a result dict: its `training` entry, or for a pretraining
    summary written before it was recorded, what its config says (`mixed_precision`
    resolved as `precision.resolve` does, "auto" left unresolved; `symmetric_loss` True
    when absent: the step was symmetric before the option existed). None if neither."""
    if result.get("training"):
        return result["training"]
    config = result.get("config", {})
    if result.get("evaluation") != "pretraining" or "mixed_precision" not in config:
        return None
    policy = config["mixed_precision"]
    return {
        "mixed_precision": "auto (unresolved)" if policy == "auto" else precision.resolve(policy),
        "symmetric_loss": config.get("symmetric_loss", True),
    }


def encoder_training(results_dir, name):
    """The training record of encoder `name` evaluated in `results_dir`: that of its
    pretraining summary there (None for an encoder without one, e.g. random init)."""
    path = pretrain_summary_path(results_dir, name)
    return recorded_training(storage.read_json(path)) if tf.io.gfile.exists(path) else None


def check_same_training(trainings):
    """Raises a one-line ValueError if `trainings` (`{path: training record or None}`)
    holds more than one record: runs of different precision or loss direction."""
    groups = {}
    for path, training in trainings.items():
        if training is not None:
            groups.setdefault(tuple(sorted(training.items())), []).append(path)
    if len(groups) > 1:
        raise ValueError(
            "Refusing to aggregate runs of different precision or loss direction: "
            + "; ".join(
                f"{dict(key)} in {', '.join(sorted(paths))}" for key, paths in groups.items()
            )
        )


def check_tap(path, result):
    """Raises a one-line ValueError if the result JSON `path` (read as `result`) taps
    `features` without recording the serving contract it was evaluated under: before
    contract 2 that tap was the projection head's output (today's `embedding`), under
    contract 2 the normalised decoder output, since contract 3 `FUSED_TAP`, so its numbers
    cannot be told apart."""
    config = result.get("config", {})
    if config.get("layer") == "features" and "serving_contract" not in config:
        raise ValueError(
            f"{path}: tap `features` without a serving contract version (before contract 2 "
            "it was the projection head's output, now `embedding`; since then `decoder`): "
            "rename it to the tap it measured or re-evaluate it."
        )


def save_start_weights(config, seed, start):
    """Writes the backbone of run `start` as the weights file continued runs load."""
    path = config.start_weights(seed, start)
    if not tf.io.gfile.exists(path):
        encoder = load_encoder(os.path.join(config.seed_dir(seed), start))
        temporary = storage.temporary_name(path[: -len(".weights.h5")], ".weights.h5")
        encoder.backbone.save_weights(temporary)
        tf.io.gfile.rename(temporary, path, overwrite=True)
        keras.backend.clear_session()
    return path


class Evaluations:
    """The three frozen evaluations, with their data loaded once."""

    def __init__(self, config):
        self.config = config
        self.camvid = os.path.join(config.data_root, "camvid")
        self.davis = os.path.join(config.data_root, "davis2016")
        self.bsds_val = os.path.join(config.data_root, "bsds500", "images", "val")
        self._probe_data = None
        self.protocols = config.protocols()

    def probe_data(self):
        if self._probe_data is None:
            size = self.protocols["linear_probe"].image_size
            limit = self.config.probe_limit
            self._probe_data = (
                load_segmentation_split(self.camvid, "train", size, limit=limit),
                load_segmentation_split(self.camvid, "val", size, limit=limit),
            )
        return self._probe_data

    def commands(self, spec, layer, seed):
        """`{evaluation: (script argv, data settings)}` for one encoder tap; the argv sets
        every field of the evaluation's protocol."""
        c = self.config
        common = [f"--encoder={spec}", f"--layer={layer}", f"--seed={seed}"]
        settings = {
            "linear_probe": ("eval_linear_probe", dict(
                data_root=self.camvid, limit=c.probe_limit,
            )),
            "davis_label_propagation": ("eval_davis", dict(
                davis_root=self.davis, max_frames=c.davis_max_frames,
            )),
            "correspondence": ("eval_correspondence", dict(
                image_dir=self.bsds_val, num_images=c.correspondence_images,
            )),
        }
        return {
            evaluation: (
                [f"experiments/{script}.py", *common]
                + [f"--{key}={value}" for key, value in flags.items() if value is not None]
                + to_argv(self.protocols[evaluation]),
                flags,
            )
            for evaluation, (script, flags) in settings.items()
        }

    def run(self, evaluation, extractor, seed):
        c = self.config
        protocol = self.protocols[evaluation]
        if evaluation == "linear_probe":
            (train_images, train_labels), (val_images, val_labels) = self.probe_data()
            return run_linear_probe(
                extractor, train_images, train_labels, val_images, val_labels, protocol,
                seed=seed,
            )
        if evaluation == "davis_label_propagation":
            return evaluate_davis(
                extractor, self.davis, protocol, max_frames=c.davis_max_frames
            )
        images = load_images(self.bsds_val, protocol.image_size, c.correspondence_images)
        return evaluate_correspondence(extractor, images, protocol, seed=seed)

    def is_done(self, path, evaluation):
        """Whether the result JSON `path` exists and records this study's protocol for
        `evaluation` (or none: written before protocols were recorded)."""
        if not tf.io.gfile.exists(path):
            return False
        result = storage.read_json(path)
        check_tap(path, result)
        if same_protocol(result, self.protocols[evaluation]):
            return True
        logging.info("Recomputing %s: it records another protocol.", path)
        return False


def result_path(results_dir, evaluation, name, layer):
    return os.path.join(results_dir, f"{evaluation}_{name}_{layer}.json")


def pretrain_summary_path(results_dir, name):
    """The JSON summary of pretraining run `name` (`pretrain_and_summarize`)."""
    return os.path.join(results_dir, f"pretrain_{name}.json")


def evaluate_seed(config, seed, evaluations):
    """Evaluates every encoder tap of one seed (skipping those with a result JSON)."""
    evaluate_encoders(
        evaluations, config.encoders(seed), config.layers, seed, config.seed_results(seed),
        force=config.force,
    )


def evaluate_encoders(
    evaluations, encoders, layers, seed, results_dir, force=False, which=EVALUATIONS
):
    """Runs the evaluations `which` on every tap in `layers` of every encoder of
    `encoders` (`{name: spec}`), writing `result_path(results_dir, ...)` JSONs; those
    already written with the study's protocol are skipped unless `force`."""
    for name, spec in encoders.items():
        for layer in layers:
            extractor = None
            for evaluation in which:
                path = result_path(results_dir, evaluation, name, layer)
                if not force and evaluations.is_done(path, evaluation):
                    continue
                if extractor is None:
                    extractor = load_feature_extractor(spec, seed=seed, layer=layer)
                evaluate_and_write(
                    evaluations, evaluation, extractor, spec, layer, seed, path,
                    training=encoder_training(results_dir, name),
                )
            keras.backend.clear_session()


def evaluate_and_write(
    evaluations, evaluation, extractor, spec, layer, seed, path, training=None
):
    """Runs one evaluation of one encoder tap and writes its result JSON to `path` (with
    the equivalent script command, the protocol, the serving contract version the tap
    names are of, and the encoder's `training_record`); returns the metrics."""
    argv, flags = evaluations.commands(spec, layer, seed)[evaluation]
    started = time.perf_counter()
    metrics = evaluations.run(evaluation, extractor, seed)
    metrics["seconds"] = time.perf_counter() - started
    write_results(
        path, evaluation, spec, metrics,
        config={"layer": layer, "serving_contract": CONTRACT_VERSION, "seed": seed, **flags},
        argv=argv, protocol=evaluations.protocols[evaluation], training=training,
    )
    logging.info("Wrote %s", path)
    return metrics


def headline(evaluation, metrics):
    """`{column: value}` of the numbers the report tables show for one result."""
    if evaluation == "linear_probe":
        return {"mIoU": metrics["mean_iou"]}
    if evaluation == "davis_label_propagation":
        return {"J": metrics["J_mean"], "F": metrics["F_mean"], "J&F": metrics["JF_mean"]}
    correspondence = metrics["all"]
    return {
        "PCK@8": correspondence["pck@8"],
        "PCK@16": correspondence["pck@16"],
        "err px": correspondence["mean_error"],
    }


COLUMNS = ("mIoU", "J", "F", "J&F", "PCK@8", "PCK@16", "err px")


def collect(results_dir, names, layers, trainings=None):
    """`{(name, layer): {column: value}}` of the result JSONs present in `results_dir`.

    Refuses (`check_tap`) a `features` JSON of unknown meaning; fills `trainings` (when
    given) with `{path: training record}` of every JSON read, and checks them
    (`check_same_training`) when not given."""
    own = trainings is None
    trainings = {} if own else trainings
    table = {}
    for name in names:
        for layer in layers:
            row = {}
            for evaluation in EVALUATIONS:
                path = result_path(results_dir, evaluation, name, layer)
                if tf.io.gfile.exists(path):
                    result = storage.read_json(path)
                    check_tap(path, result)
                    trainings[path] = recorded_training(result) or encoder_training(
                        results_dir, name
                    )
                    row.update(headline(evaluation, result["metrics"]))
            if row:
                table[name, layer] = row
    if own:
        check_same_training(trainings)
    return table


def aggregate(config, names=tuple(ENCODER_NAMES)):
    """`{(name, layer): {column: [value per seed]}}` of the encoders `names`, over the
    seeds with results; refuses results of runs of different precision or direction."""
    return aggregate_sources([(config, names)])


def aggregate_sources(sources):
    """`aggregate` over several `(config, names)` (e.g. the study's folder and a tuning
    folder beside it), with the seeds and taps of the first; refuses results of runs of
    different precision or direction across all of them."""
    first = sources[0][0]
    trainings = {}
    per_seed = [
        {
            key: row
            for config, names in sources
            for key, row in collect(
                config.seed_results(seed), names, first.layers, trainings
            ).items()
        }
        for seed in first.seeds
    ]
    check_same_training(trainings)
    merged = {}
    for table in per_seed:
        for key, row in table.items():
            for column, value in row.items():
                merged.setdefault(key, {}).setdefault(column, []).append(value)
    return merged


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def format_cell(values, digits=3):
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    text = f"{mean:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def tap_description(name, layer):
    served = ", served" if layer == SERVED_TAP else ""
    levels = [part in PYRAMID_LEVELS for part, _ in layer_parts(layer)]
    if all(levels):
        return f"`{layer}` (backbone{served})"
    if name == "random":
        return f"`{layer}` (untrained{served})"
    trained = "trained" if name.startswith("vader") else "untrained decoder"
    backbone = " + backbone" if any(levels) else ""
    return f"`{layer}` ({trained}{backbone}{served})"


def _table_row(label, tap, row):
    """One Markdown row: `row` is `{column: [value per seed]}`."""
    seeds = max(len(values) for values in row.values())
    cells = [
        format_cell(row.get(column, []), 1 if column == "err px" else 3) for column in COLUMNS
    ]
    return f"| {label} | {tap} | {seeds} | " + " | ".join(cells) + " |"


def results_table(aggregated, before=None, before_label="before"):
    """Markdown table: mean ± std (sample std over seeds) per encoder tap, then the rows of
    `before` (`{(name, layer): {column: value}}`, one seed)."""
    lines = [
        "| Encoder | Tap | seeds | CamVid mIoU | DAVIS J | DAVIS F | DAVIS J&F "
        "| PCK@8 | PCK@16 | mean err (px) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, layer), row in aggregated.items():
        lines.append(_table_row(ENCODER_NAMES[name], tap_description(name, layer), row))
    for (name, layer), row in (before or {}).items():
        lines.append(_table_row(
            f"{ENCODER_NAMES[name]} ({before_label})", tap_description(name, layer),
            {column: [value] for column, value in row.items()},
        ))
    return "\n".join(lines) + "\n"


def goal_check(
    aggregated, vader="vader", baselines=("moco", "random"), tap=SERVED_TAP, label=None,
    floor=None,
):
    """Issue 20's goal: whether VADeR's served output (`tap`) beats the strongest baseline,
    the best tap of any of `baselines`, by >= 3 points of CamVid mIoU and >= 10 of DAVIS
    J&F, with the seed spread smaller than the gap, and keeps PCK@8 at least at that of
    the output served when the goal was set (`ISSUE_FEATURES_TAP` of run `floor`, by
    default `vader` itself). Lines of Markdown, naming the strongest baseline and each
    baseline's best tap; `label` names `vader` (default: its `ENCODER_NAMES` entry)."""
    label = label or ENCODER_NAMES[vader]
    floor = floor or vader
    lines = []
    for column, title, target in (("mIoU", "CamVid mIoU", 3), ("J&F", "DAVIS J&F", 10)):
        ours, our_std = mean_std(aggregated.get((vader, tap), {}).get(column, []))
        best_taps = {}  # baseline -> (layer, mean, std) of its best tap
        for baseline in baselines:
            taps = {
                layer: mean_std(row.get(column, []))
                for (name, layer), row in aggregated.items()
                if name == baseline
            }
            taps = {layer: value for layer, value in taps.items() if value[0] is not None}
            if taps:
                layer = max(taps, key=lambda layer: taps[layer][0])
                best_taps[baseline] = (layer, *taps[layer])
        if ours is None or len(best_taps) < len(baselines):
            lines.append(f"- {title}: not measured yet.")
            continue
        strongest = max(best_taps, key=lambda baseline: best_taps[baseline][1])
        best_layer, best, best_std = best_taps[strongest]
        others = "; ".join(
            f"{ENCODER_NAMES[baseline]}'s best `{layer}` {100 * mean:.1f}"
            for baseline, (layer, mean, _) in best_taps.items()
            if baseline != strongest
        )
        gap = 100 * (ours - best)
        spread = 100 * max(our_std or 0.0, best_std or 0.0)
        met = gap >= target and spread < gap
        lines.append(
            f"- {title}: {label} `{tap}` (served) {100 * ours:.1f} vs the "
            f"strongest baseline, {ENCODER_NAMES[strongest]}'s `{best_layer}` "
            f"{100 * best:.1f} ({others}): gap {gap:+.1f} points, largest seed std "
            f"{spread:.1f} -> {'met' if met else 'missed'} (goal: gap >= {target} and "
            "std < gap)."
        )
    ours = mean_std(aggregated.get((vader, tap), {}).get("PCK@8", []))[0]
    before = mean_std(aggregated.get((floor, ISSUE_FEATURES_TAP), {}).get("PCK@8", []))[0]
    if ours is None or before is None:
        lines.append("- PCK@8: not measured yet.")
    else:
        lines.append(
            f"- PCK@8: {label} `{tap}` (served) {ours:.3f} vs {ENCODER_NAMES[floor]}'s "
            f"`{ISSUE_FEATURES_TAP}` (the served `features` when issue 20 was filed) "
            f"{before:.3f}: {ours - before:+.3f} -> {'met' if ours >= before else 'missed'} "
            "(goal: not below)."
        )
    return lines


def hardware_description():
    gpus = tf.config.list_physical_devices("GPU")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{len(gpus)} GPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def _seed_files(config, pattern):
    """The files matching `pattern` in every seed's results folder, sorted."""
    return sorted(tf.io.gfile.glob(os.path.join(config.results_dir, "seed*", pattern)))


def _seconds(paths):
    total = 0.0
    for path in paths:
        metrics = storage.read_json(path)["metrics"]
        total += metrics.get("seconds", 0.0) + sum(metrics.get("session_seconds", []))
    return total


def budget_minutes(config):
    """`(pretraining, evaluations)` minutes summed from the JSONs of the study's own runs
    and encoders, leaving out the runs of the harnesses that share its results folder
    (tuning, speed/quality variants)."""
    pretrain, evaluations = [], []
    for seed in config.seeds:
        results = config.seed_results(seed)
        pretrain += [pretrain_summary_path(results, name) for name in config.runs()]
        evaluations += [
            result_path(results, evaluation, name, layer)
            for evaluation in EVALUATIONS
            for name in ENCODER_NAMES
            for layer in config.layers
        ]
    return tuple(
        _seconds([path for path in paths if tf.io.gfile.exists(path)]) / 60
        for paths in (pretrain, evaluations)
    )


def write_report(config, command, figures, elapsed):
    """Writes the Markdown report `config.report` from the result JSONs present."""
    c = config
    aggregated = aggregate(c)
    before = None
    if c.before_dir and tf.io.gfile.isdir(c.before_dir):
        before = collect(c.before_dir, ENCODER_NAMES, STUDY_LAYERS)
    davis_sequences = ", ".join(list_sequences(os.path.join(c.data_root, "davis2016")))
    protocols = c.protocols()
    probe = protocols["linear_probe"]
    davis = protocols["davis_label_propagation"]
    correspondence = protocols["correspondence"]
    done = [seed for seed in c.seeds if tf.io.gfile.isdir(c.seed_results(seed))]
    pretrain_minutes, evaluation_minutes = budget_minutes(c)
    rewritten_note = []
    if c.report_only:
        rewritten_note = [
            "(This report was rewritten from the result JSONs by the same command with "
            "`--report_only`.)",
            "",
        ]
    lines = [
        "# Small-scale reproduction: VADeR vs MoCo v2 vs random init",
        "",
        "Generated by `experiments/reproduce_small.py`; rerunning the command below resumes "
        f"pretraining and skips evaluations whose JSON exists (in `{c.results_dir}/seed*/`).",
        "",
        "## Command",
        "",
        "```",
        shlex.join(arg for arg in command if arg.split("=", 1)[0] not in REPORT_ONLY_FLAGS),
        "```",
        "",
        *rewritten_note,
        "## Results",
        "",
        f"Mean ± sample standard deviation over seeds {', '.join(map(str, done)) or 'none'} "
        f"(of {', '.join(map(str, c.seeds))}); the `seeds` column says how many a row has.",
        "",
        results_table(aggregated, before, c.before_label),
        "Frozen features throughout. Every tap is a stride-4 map of L2-normalised vectors; "
        "backbone levels are resized bilinearly to the stride-4 grid. MoCo trains only the "
        "backbone (its decoder keeps its random initialisation), so its `embedding` and "
        "`decoder` taps are untrained heads on a MoCo backbone. `embedding` is the "
        "projection head's output (the training embedding); `decoder` the L2-normalised "
        f"decoder output (the served `features` under serving contract 2); `{SERVED_TAP}` "
        "the two joined, cell similarities weighted 1 : 0.25 (the served `features` since "
        "contract 3). Results evaluated as `--layer=features` under contract 1, when that "
        "was the head's output, are stored as `embedding` (their JSON's `note` says so).",
        "",
        f"**Goal** (issue 20: VADeR's served output, `{SERVED_TAP}`, against the strongest "
        "baseline: the best tap of MoCo v2 and of random init; CamVid +3, DAVIS +10):",
        "",
        *goal_check(aggregated),
        *(
            goal_check(aggregated, "vader_from_moco", ("moco_continued", "random"))
            if c.continue_steps else []
        ),
        "",
        "### Protocols",
        "",
        f"- Linear probe: CamVid train ({'all' if c.probe_limit is None else c.probe_limit} "
        f"frames) -> val, short side {probe.image_size}, {probe.steps} Adam steps, "
        f"{probe.num_classes} classes, void ignored.",
        f"- DAVIS-2016 ({davis_sequences}): short side {davis.image_size}, "
        f"{'all' if c.davis_max_frames is None else c.davis_max_frames} frames, first-frame "
        f"mask propagated ({davis.context_frames} context frames, "
        f"top-{davis.topk}, temperature {davis.temperature}, radius "
        f"{davis.radius:g} cells).",
        f"- Correspondence: first {c.correspondence_images} BSDS500 val photos, short side "
        f"{correspondence.image_size}, one crop+flip and one homography warp each; PCK over "
        "both warp kinds.",
        "- Every other setting is its protocol's default (`vader_tf/eval/protocols.py`); each "
        "result JSON records its protocol in full.",
        "",
        "## Budget",
        "",
        f"Every run: backbone {c.backbone}, batch {c.batch_size}, {c.image_size} px views, base "
        f"LR {c.base_learning_rate:g} (per 256 images, cosine), VADeR queue "
        f"{c.vader_queue_size} pixels, MoCo queue {c.moco_queue_size} images, other settings at "
        "their `PretrainConfig` defaults. From random init (the seed's): VADeR and MoCo v2, "
        f"{c.train_steps} steps."
        + (
            f" Paper's setting: VADeR and MoCo v2 each continue for {c.continue_steps} steps "
            "from the MoCo run's backbone (fresh heads, queue and schedule), so both have seen "
            f"{c.train_steps + c.continue_steps} steps in total."
            if c.continue_steps else ""
        ),
        f"Data: `{pretraining_data_spec(c.data_root)}` "
        f"({pretraining_pool_size(c.data_root)} images: BSDS500 train+test and CamVid train "
        "frames, no labels).",
        "",
        f"Hardware: {hardware_description()}. Pretraining {pretrain_minutes:.0f} min wall, "
        f"evaluations {evaluation_minutes:.0f} min (summed from the study's JSONs, tuning "
        f"runs left out); the last session of the command took {elapsed / 60:.1f} min.",
        "",
        "Each result JSON under `results/seed*/` holds the standalone command that computes "
        "its numbers, e.g.:",
        "",
        "```",
    ]
    examples = (
        _seed_files(c, f"*_vader_{SERVED_TAP}.json") + _seed_files(c, "pretrain_*.json")[:4]
    )
    lines += [" ".join(storage.read_json(path)["command"]) for path in examples[:7]]
    lines += ["```", ""]
    if figures:
        report_dir = os.path.dirname(c.report) or "."
        lines += ["## Figures", ""]
        lines += [
            f"![{title}]({os.path.relpath(path, report_dir)})"
            for title, path in figures.items()
            if path
        ]
        lines.append("")
    lines += [
        "## Caveats",
        "",
        f"- Scale: {c.train_steps} steps of batch {c.batch_size} at {c.image_size} px on "
        f"{pretraining_pool_size(c.data_root)} images, against 200 epochs of ImageNet "
        "(1.28M images, batch 256, 224 px) in the paper.",
        "- CPU only, ResNet-18; the evaluations are shrunk (short sides above, 3 DAVIS "
        "sequences, 101 CamVid val frames) and use stride-4 maps throughout.",
        "- CamVid train frames are in the pretraining pool (unlabelled) and are also the "
        "probe's training set; BSDS500 val photos are kept out of pretraining.",
        "",
    ]
    from vader_tf.studies import compute_curve_study, tuning_study  # They import this module.

    if tf.io.gfile.exists(os.path.join(c.results_dir, TUNING_FILE + ".json")):
        tuning, markdown = tuning_study.rewrite_table(c.results_dir)
        lines += [
            "## Tuning",
            "",
            "VADeR's run with one setting changed, evaluated on the tuning sets only (CamVid "
            "val, the DAVIS sequences above; never the BSDS500 val photos). Command:",
            "",
            "```",
            shlex.join(tuning["command"]),
            "```",
            "",
            markdown.strip(),
            "",
        ]
    lines += tuning_study.carry_section(c)
    lines += compute_curve_study.report_section(c.results_dir, os.path.dirname(c.report) or ".")
    notes = c.notes or os.path.join(c.results_dir, FINDINGS_FILE)
    if tf.io.gfile.exists(notes):
        notes_text = storage.read_bytes(notes).decode()
        lines += ["## Findings", "", notes_text.strip(), ""]
    storage.write_atomic(c.report, "\n".join(lines))


def make_figures(config):
    """Pretraining curves and CamVid bars (mean over seeds), PCA pictures of one seed."""
    from vader_tf.eval import plots  # Needs matplotlib (the `results` extra).

    seed = config.seeds[0]
    histories = {}
    for name in config.runs():
        path = pretrain_summary_path(config.seed_results(seed), name)
        if tf.io.gfile.exists(path):
            histories[ENCODER_NAMES[name]] = storage.read_json(path)["metrics"]["history"]
    aggregated = aggregate(config)
    bars = {
        f"{ENCODER_NAMES[name]}\n{layer}": mean_std(row["mIoU"])[0]
        for (name, layer), row in aggregated.items()
        if "mIoU" in row
    }
    image = resize_and_crop_image(
        load_image(list_images(os.path.join(config.data_root, "camvid", "val"))[0]),
        config.probe_image_size,
    )
    pca_path = os.path.join(config.results_dir, "feature_pca.png")
    encoders = {
        name: spec for name, spec in config.encoders(seed).items()
        if name == "random" or completed_steps(spec)
    }
    pictures = {}
    if set(encoders) == {"random"} and tf.io.gfile.exists(pca_path):
        # The runs are not on this machine (e.g. `--report_only` elsewhere): keep the
        # figure drawn when they were, rather than one of the random encoder alone.
        logging.info("No trained run of seed %d here: keeping %s.", seed, pca_path)
        encoders = {}
    for name, spec in encoders.items():
        extractor = load_feature_extractor(spec, seed=seed, layer=PCA_LAYER)
        features = extractor(image[None]).numpy()[0]
        pictures[f"{ENCODER_NAMES[name]} {PCA_LAYER}"] = visualize.upsample_nearest(
            visualize.pca_rgb(features)
        )
        keras.backend.clear_session()
    pca_title = f"PCA of `{PCA_LAYER}` (seed {seed})"
    return {
        f"Pretraining curves (seed {seed})": plots.plot_pretraining(
            histories, os.path.join(config.results_dir, "pretraining_curves.png")
        ),
        "CamVid linear-probe mIoU (mean over seeds)": plots.plot_metric_bars(
            bars, "CamVid val mIoU (linear probe)",
            os.path.join(config.results_dir, "camvid_miou.png"),
        ),
        # The input is a CamVid frame (CC BY-NC): the committed figure shows only features.
        pca_title: plots.plot_feature_pictures(None, pictures, pca_path) if pictures else pca_path,
    }


def run_seed(config, seed, evaluations):
    """Pretrains and evaluates everything of one seed (resuming what exists)."""
    for name in config.runs():
        _, start = RUNS[name]
        if start is not None:
            save_start_weights(config, seed, start)
        run_pretraining(config, name, seed)
    evaluate_seed(config, seed, evaluations)


def run_study(config, command):
    """Runs every seed in turn, rewriting the report after each; returns the aggregate."""
    started = time.perf_counter()
    evaluations = Evaluations(config)
    for seed in () if config.report_only else config.seeds:
        run_seed(config, seed, evaluations)
        write_report(config, command, {}, time.perf_counter() - started)
    figures = make_figures(config)
    write_report(config, command, figures, time.perf_counter() - started)
    return aggregate(config)
