"""A small-scale comparison of VADeR with MoCo v2 and a random encoder, end to end.

`run_comparison` pretrains VADeR and MoCo from the same random initialisation (same seed,
backbone, data, resolution, batch and number of steps), then evaluates both and the
untrained encoder with the frozen-feature protocols of `vader_tf.eval`:

- linear probe on CamVid (`<data_root>/camvid`): mIoU on val, probe trained on train;
- DAVIS-2016 label propagation (`<data_root>/davis2016`): J, F;
- correspondence under known warps of BSDS500 val photos (`<data_root>/bsds500`): PCK.

Pretraining uses BSDS500 train + test photos and the CamVid train frames (no labels); the
BSDS500 val photos are kept out of pretraining because the correspondence test uses them.

VADeR is evaluated at each tap of `layers`, MoCo and the random encoder at each tap of
`baseline_layers` (see `vader_tf.eval.encoders`): a MoCo run trains only the backbone, so
its `features` come from an untrained decoder and head, and only a backbone tap (in both
lists) compares it fairly with VADeR.

Every step is resumable: pretraining resumes from its run directory, and an evaluation
whose result JSON exists is skipped unless `force` is set. Each result JSON records, as
its `command`, the standalone `experiments/` command that computes the same numbers.
"""

import dataclasses
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.data.segmentation import load_image, load_segmentation_split, resize_and_crop_image
from vader_tf.eval import visualize
from vader_tf.eval.correspondence import evaluate_correspondence, list_images
from vader_tf.eval.davis import evaluate_davis, list_sequences
from vader_tf.eval.encoders import load_feature_extractor
from vader_tf.eval.linear_probe import run_linear_probe
from vader_tf.eval.reporting import write_results
from vader_tf.run_dir import RunDir
from vader_tf.training.pretrain import PretrainConfig, pretrain

METHODS = ("vader", "moco")
ENCODER_NAMES = {"vader": "VADeR", "moco": "MoCo v2", "random": "random init"}
# The `PretrainConfig` fields a comparison sets; the others keep their defaults.
PRETRAIN_FLAGS = (
    "model_dir", "data", "method", "backbone", "image_size", "batch_size", "train_steps",
    "base_learning_rate", "checkpoint_every", "seed",
)
CAMVID_CLASSES = 11
CAMVID_IGNORE = 11
PCK_THRESHOLDS = (4, 8, 16, 32)
# Hand-written findings in the results folder, included in the report when present.
FINDINGS_FILE = "findings.md"


@dataclasses.dataclass
class ComparisonConfig:
    """Budget and locations of the comparison (the flags of `reproduce_small.py`)."""

    data_root: str
    run_dir: str = "runs/reproduce_small"
    results_dir: str = "results"
    report: str = "RESULTS.md"
    notes: str | None = None
    # Pretraining (the same for both methods).
    backbone: str = "resnet18"
    image_size: int = 96
    batch_size: int = 16
    train_steps: int = 1200
    base_learning_rate: float = 0.5
    checkpoint_every: int = 100
    seed: int = 0
    # Evaluation.
    layers: tuple = ("features", "P4")
    baseline_layers: tuple = ("P4",)
    probe_image_size: int = 224
    probe_steps: int = 1000
    probe_limit: int | None = None
    davis_image_size: int = 192
    davis_max_frames: int | None = None
    correspondence_image_size: int = 256
    correspondence_images: int = 100
    force: bool = False
    verbose: int = 1

    def pretrain_config(self, method):
        shared = {name: getattr(self, name) for name in PRETRAIN_FLAGS[3:]}
        return PretrainConfig(
            model_dir=os.path.join(self.run_dir, method),
            data=pretraining_data_spec(self.data_root),
            method=method,
            verbose=self.verbose,
            **shared,
        )

    def encoder_taps(self):
        """`[(name, encoder spec, layer)]` of every evaluated encoder tap."""
        specs = {method: os.path.join(self.run_dir, method) for method in METHODS}
        specs["random"] = f"random:{self.backbone}"
        return [
            (name, spec, layer)
            for name, spec in specs.items()
            for layer in (self.layers if name == "vader" else self.baseline_layers)
        ]


PRETRAINING_FOLDERS = ("bsds500/images/train", "bsds500/images/test", "camvid/train")


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
                scalar = float(tf.make_ndarray(value.tensor))
                by_step.setdefault(int(event.step), {})[value.tag] = scalar
    return [{"step": step, **metrics} for step, metrics in sorted(by_step.items())]


def completed_steps(model_dir):
    """The step of the newest checkpoint in a run directory (0 if none)."""
    return RunDir(model_dir).latest_step()


def run_pretraining(config, method):
    """Pretrains (or resumes) one method; returns its summary, also written as JSON."""
    pretrain_config = config.pretrain_config(method)
    summary_path = os.path.join(config.results_dir, f"pretrain_{method}.json")
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
        (step - previous) * config.batch_size / entry["images_per_s"]
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
        f"--{name}={getattr(pretrain_config, name)}" for name in PRETRAIN_FLAGS
    ]
    write_results(
        summary_path,
        "pretraining",
        pretrain_config.model_dir,
        metrics,
        config=dataclasses.asdict(pretrain_config),
        argv=command,
    )
    return metrics


class Evaluations:
    """The three frozen evaluations, with their data loaded once."""

    def __init__(self, config):
        self.config = config
        self.camvid = os.path.join(config.data_root, "camvid")
        self.davis = os.path.join(config.data_root, "davis2016")
        self.bsds_val = os.path.join(config.data_root, "bsds500", "images", "val")
        self._probe_data = None

    def probe_data(self):
        if self._probe_data is None:
            size, limit = self.config.probe_image_size, self.config.probe_limit
            self._probe_data = (
                load_segmentation_split(self.camvid, "train", size, limit=limit),
                load_segmentation_split(self.camvid, "val", size, limit=limit),
            )
        return self._probe_data

    def commands(self, spec, layer):
        """`{evaluation: (script argv, settings)}` for one encoder tap."""
        c = self.config
        common = [f"--encoder={spec}", f"--layer={layer}", f"--seed={c.seed}"]
        probe = dict(
            data_root=self.camvid, num_classes=CAMVID_CLASSES, ignore_label=CAMVID_IGNORE,
            image_size=c.probe_image_size, steps=c.probe_steps, limit=c.probe_limit,
        )
        davis = dict(
            davis_root=self.davis, image_size=c.davis_image_size, max_frames=c.davis_max_frames
        )
        correspondence = dict(
            image_dir=self.bsds_val, image_size=c.correspondence_image_size,
            num_images=c.correspondence_images,
        )
        settings = {
            "linear_probe": ("eval_linear_probe", probe),
            "davis_label_propagation": ("eval_davis", davis),
            "correspondence": ("eval_correspondence", correspondence),
        }
        return {
            evaluation: (
                [f"experiments/{script}.py", *common]
                + [f"--{key}={value}" for key, value in flags.items() if value is not None],
                flags,
            )
            for evaluation, (script, flags) in settings.items()
        }

    def run(self, evaluation, extractor):
        c = self.config
        if evaluation == "linear_probe":
            (train_images, train_labels), (val_images, val_labels) = self.probe_data()
            return run_linear_probe(
                extractor, train_images, train_labels, val_images, val_labels,
                num_classes=CAMVID_CLASSES, ignore_label=CAMVID_IGNORE, steps=c.probe_steps,
                seed=c.seed,
            )
        if evaluation == "davis_label_propagation":
            return evaluate_davis(
                extractor, self.davis, short_side=c.davis_image_size,
                max_frames=c.davis_max_frames, context_frames=3, topk=10, temperature=0.07,
                radius=12.0,
            )
        paths = list_images(self.bsds_val, limit=c.correspondence_images)
        images = (
            resize_and_crop_image(load_image(path), c.correspondence_image_size)
            for path in paths
        )
        return evaluate_correspondence(extractor, images, thresholds=PCK_THRESHOLDS, seed=c.seed)


def result_path(config, evaluation, name, layer):
    return os.path.join(config.results_dir, f"{evaluation}_{name}_{layer}.json")


def run_evaluations(config):
    """Evaluates every encoder tap; returns `{(name, layer): {evaluation: metrics}}`."""
    evaluations = Evaluations(config)
    results = {}
    for name, spec, layer in config.encoder_taps():
        extractor = None
        results[name, layer] = {}
        for evaluation, (argv, flags) in evaluations.commands(spec, layer).items():
            path = result_path(config, evaluation, name, layer)
            if tf.io.gfile.exists(path) and not config.force:
                logging.info("Exists, skipped: %s", path)
            else:
                if extractor is None:
                    extractor = load_feature_extractor(spec, seed=config.seed, layer=layer)
                started = time.perf_counter()
                metrics = evaluations.run(evaluation, extractor)
                metrics["seconds"] = time.perf_counter() - started
                write_results(
                    path, evaluation, spec, metrics,
                    config={"layer": layer, "seed": config.seed, **flags}, argv=argv,
                )
                logging.info("Wrote %s", path)
            results[name, layer][evaluation] = storage.read_json(path)["metrics"]
        keras.backend.clear_session()
    return results


def feature_pictures(config, image_path):
    """`{(name, layer): PCA RGB picture}` of every encoder tap on one image, and the
    image itself (resized like the linear probe's inputs)."""
    image = resize_and_crop_image(load_image(image_path), config.probe_image_size)
    pictures = {}
    for name, spec, layer in config.encoder_taps():
        extractor = load_feature_extractor(spec, seed=config.seed, layer=layer)
        features = extractor(image[None]).numpy()[0]
        pictures[name, layer] = visualize.upsample_nearest(visualize.pca_rgb(features))
        keras.backend.clear_session()
    return np.clip(np.round(image), 0, 255).astype(np.uint8), pictures


def tap_description(name, layer):
    if layer == "features":
        trained = {"vader": "trained", "moco": "untrained decoder + head", "random": "untrained"}
        return f"`features` ({trained[name]})"
    return f"`{layer}` (backbone)"


def _number(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_table(results):
    """Markdown table of the headline metric of each evaluation per encoder tap."""
    header = (
        "| Encoder | Tap | CamVid mIoU | DAVIS J | DAVIS F | DAVIS J&F "
        "| PCK@8 px | PCK@16 px | mean err (px) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for (name, layer), metrics in results.items():
        probe = metrics["linear_probe"]
        davis = metrics["davis_label_propagation"]
        correspondence = metrics["correspondence"]["all"]
        rows.append(
            f"| {ENCODER_NAMES[name]} | {tap_description(name, layer)} "
            f"| {_number(probe['mean_iou'])} | {_number(davis['J_mean'])} "
            f"| {_number(davis['F_mean'])} | {_number(davis['JF_mean'])} "
            f"| {_number(correspondence['pck@8'])} | {_number(correspondence['pck@16'])} "
            f"| {_number(correspondence['mean_error'], 1)} |"
        )
    return header + "\n".join(rows) + "\n"


def hardware_description():
    cpus = os.cpu_count()
    gpus = tf.config.list_physical_devices("GPU")
    return (
        f"{platform.processor() or platform.machine()}, {cpus} CPU cores, "
        f"{len(gpus)} GPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def evaluation_seconds(results):
    return sum(
        metrics.get("seconds", 0.0) for taps in results.values() for metrics in taps.values()
    )


def notes_path(config):
    return config.notes or os.path.join(config.results_dir, FINDINGS_FILE)


def write_report(config, command, pretraining, results, figures, elapsed):
    """Writes the Markdown report `config.report`."""
    c = config
    davis_sequences = ", ".join(
        list_sequences(os.path.join(c.data_root, "davis2016"))
    )
    lines = [
        "# Small-scale reproduction: VADeR vs MoCo v2 vs random init",
        "",
        "Generated by `experiments/reproduce_small.py`; rerunning the command below "
        "resumes pretraining and skips evaluations whose JSON exists "
        f"(in `{c.results_dir}/`).",
        "",
        "## Command",
        "",
        "```",
        " ".join(command),
        "```",
        "",
        "## Results",
        "",
        results_table(results),
        "Frozen features throughout. Every tap is a stride-4 map of L2-normalised "
        "vectors; backbone levels are resized bilinearly to the stride-4 grid. "
        "The MoCo run trains only the backbone (its decoder and head keep their random "
        "initialisation), so compare MoCo with VADeR on backbone taps. "
        f"The `P4` tap (stride 16, {256 if c.backbone in ('resnet18', 'resnet34') else 1024} "
        "channels) is the deepest level that still has a few cells per object at these "
        "image sizes; `P5` (stride 32) has 7 cells across a 224-pixel image.",
        "",
        f"- Linear probe: CamVid train ({'all' if c.probe_limit is None else c.probe_limit} "
        f"frames) -> val, short side {c.probe_image_size}, {c.probe_steps} Adam steps, "
        f"{CAMVID_CLASSES} classes, void ignored.",
        f"- DAVIS-2016 ({davis_sequences}): short side {c.davis_image_size}, "
        f"{'all' if c.davis_max_frames is None else c.davis_max_frames} frames, "
        "first-frame mask propagated (3 context frames, top-10, temperature 0.07, "
        "radius 12 cells).",
        f"- Correspondence: first {c.correspondence_images} BSDS500 val photos, short side "
        f"{c.correspondence_image_size}, one crop+flip and one homography warp each; "
        "PCK over both warp kinds.",
        "",
        "## Budget",
        "",
        "| Run | Steps | Batch | Image size | Base LR (LR) | Training time | Final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, summary in pretraining.items():
        pretrain_config = c.pretrain_config(method)
        sessions = summary["session_seconds"]
        lines.append(
            f"| {ENCODER_NAMES[method]} | {summary['train_steps']} | {c.batch_size} "
            f"| {c.image_size} | {c.base_learning_rate:g} ({pretrain_config.learning_rate:g}) "
            f"| {summary['train_seconds'] / 60:.1f} min in steps"
            + (f", {sum(sessions) / 60:.1f} min wall" if sessions else "")
            + f" | {_number(summary['final_loss'])} |"
        )
    lines += [
        "",
        f"Both runs: backbone {c.backbone}, seed {c.seed} (same initial weights; the "
        "random-init row is that initialisation), every other hyper-parameter at its "
        "`PretrainConfig` default (queue 4096, temperature 0.2, EMA 0.99, 64 matched "
        "points and 16 queued pixels per image for VADeR). Data: "
        f"`{pretraining_data_spec(c.data_root)}` (BSDS500 train+test and CamVid train "
        "frames, no labels).",
        "",
        f"Hardware: {hardware_description()}. Time: pretraining "
        f"{sum(sum(s['session_seconds']) for s in pretraining.values()) / 60:.1f} min wall, "
        f"evaluations {evaluation_seconds(results) / 60:.1f} min (summed from their "
        f"JSONs); the last session of the command took {elapsed / 60:.1f} min.",
        "",
        "Standalone commands computing the same numbers (each result JSON holds its own):",
        "",
        "```",
    ]
    for method in pretraining:
        summary = storage.read_json(os.path.join(c.results_dir, f"pretrain_{method}.json"))
        lines.append(" ".join(summary["command"]))
    for name, layer in results:
        for evaluation in ("linear_probe", "davis_label_propagation", "correspondence"):
            result = storage.read_json(result_path(c, evaluation, name, layer))
            lines.append(" ".join(result["command"]))
    lines += ["```", ""]
    if figures:
        lines += ["## Figures", ""]
        report_dir = os.path.dirname(c.report) or "."
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
        "(1.28M images, batch 256, 224 px) in the paper. One seed per method: there is no "
        "estimate of run-to-run variance, so small differences may not be significant.",
        "- Initialisation: random for both methods, whereas the paper initialises VADeR "
        "from a MoCo-pretrained ResNet-50. Its claim is about that setting; this run "
        "tests whether pixel-level contrast helps from scratch at tiny scale.",
        "- CPU only, ResNet-18; the evaluations are shrunk (short sides above, 3 DAVIS "
        "sequences, 101 CamVid val frames) and use stride-4 features throughout.",
        "- CamVid train frames are in the pretraining pool (unlabelled) and are also the "
        "probe's training set; BSDS500 val photos are kept out of pretraining.",
        "",
    ]
    if tf.io.gfile.exists(notes_path(c)):
        notes = storage.read_bytes(notes_path(c)).decode()
        lines += ["## Findings", "", notes.strip(), ""]
    storage.write_atomic(c.report, "\n".join(lines))


def run_comparison(config, command):
    """Pretrains, evaluates, plots and writes the report; returns the results dict."""
    from vader_tf.eval import plots  # Needs matplotlib (the `results` extra).

    started = time.perf_counter()
    storage.makedirs(config.results_dir)
    pretraining = {method: run_pretraining(config, method) for method in METHODS}
    results = run_evaluations(config)
    picture_image = list_images(os.path.join(config.data_root, "camvid", "val"))[0]
    _, pictures = feature_pictures(config, picture_image)
    figures = {
        "Pretraining curves": plots.plot_pretraining(
            {ENCODER_NAMES[m]: s["history"] for m, s in pretraining.items()},
            os.path.join(config.results_dir, "pretraining_curves.png"),
        ),
        "CamVid linear-probe mIoU": plots.plot_metric_bars(
            {
                f"{ENCODER_NAMES[name]}\n{layer}": metrics["linear_probe"]["mean_iou"]
                for (name, layer), metrics in results.items()
            },
            "CamVid val mIoU (linear probe)",
            os.path.join(config.results_dir, "camvid_miou.png"),
        ),
        # The input is a CamVid frame (CC BY-NC): the committed figure shows only features.
        "PCA of features": plots.plot_feature_pictures(
            None,
            {f"{ENCODER_NAMES[name]} {layer}": p for (name, layer), p in pictures.items()},
            os.path.join(config.results_dir, "feature_pca.png"),
        ),
    }
    write_report(config, command, pretraining, results, figures, time.perf_counter() - started)
    return results
