"""How VADeR's margin over MoCo v2 changes with compute (issue 20 §3).

The study's VADeR run and its MoCo v2 run (`small_study.StudyConfig`: data, backbone,
view size, batch, learning rate, queues), each pretrained for every length of `steps`
(default 1x, 2x and 4x the study's 1200 steps; each length is its own run with its own
cosine schedule), from the seed's random initialisation. Runs go to
`<run_dir>/seed<S>/<method>_<steps>`. Unlike the study, which pins float32, they train in
`PretrainConfig`'s default precision (`mixed_precision="auto"`: bfloat16 where the
hardware computes it natively), so their results live in their own folder
(`results/compute_curve` by default): the study's report refuses to aggregate runs of
different precision. Every result JSON records the run's resolved precision and loss
direction (`small_study.training_record`).

Every run is evaluated, at the study's protocols, on the three evaluations (CamVid
linear probe, DAVIS label propagation, BSDS500 correspondence) at the served output
(`small_study.SERVED_TAP`, serving contract 3), at `decoder` (contract 2's served output)
and at `P4`, the taps among which every method's best lies in the study, and so is each
seed's random
initialisation (`random_init`; the issue's strongest baseline may be either), drawn at
0 steps. Runs are made in order of length, both methods at each, so the cheapest
complete comparison comes first. Resumable like the study: pretraining resumes from its
run directory (an interrupted run from its last checkpoint), and an evaluation whose
JSON exists is skipped (unless `force`). After every run it rewrites, in `results_dir`,
`compute_curve.json` (per method, tap and length: every metric over the seeds done),
`compute_curve.md` (its table) and `compute_curve.png` (CamVid mIoU, DAVIS J&F and PCK@8
against steps); the study's report (`small_study.write_report`) shows them in a "Compute
curve" section when `<its results_dir>/compute_curve/compute_curve.json` exists.

The curve is made of every run found in `results_dir`, so a second seed added later
(e.g. `--seeds=1 --steps=4800`) joins the first's points; the JSON keeps every command
that contributed.
"""

import dataclasses
import os
import re
import shlex
from typing import ClassVar

import keras
import tensorflow as tf

from vader_tf import storage
from vader_tf.config_flags import inherited_option, option
from vader_tf.eval.encoders import is_layer
from vader_tf.studies import small_study
from vader_tf.training.pretrain import PretrainConfig

# The `PretrainConfig` fields the VADeR run changes from the study's VADeR run (none: the
# study's default). Set the new default method here when it changes; every result JSON
# and `compute_curve.json` record it.
VADER_FIELDS = {}
# Method -> the fields its runs change from the study's run of the same name.
METHODS = {"vader": VADER_FIELDS, "moco": {}}
# VADeR's output the curve follows: the served `features` (serving contract 3).
CURVE_TAP = small_study.SERVED_TAP
CURVE_TAP_LABEL = "served"
# That output and its two parts, among which each method's best tap lies in the study.
CURVE_LAYERS = (CURVE_TAP, "decoder", "P4")
# The metrics plotted (`small_study.headline` columns) and their titles.
PLOTTED = {"mIoU": "CamVid val mIoU", "J&F": "DAVIS J&F", "PCK@8": "PCK@8"}
# Where the study's report looks for the curve, under its own `results_dir`.
RESULTS_SUBDIR = "compute_curve"
CURVE_FILE = "compute_curve"
# The untrained baseline: each seed's random initialisation, at "steps" 0.
RANDOM = "random"
_RUN_SUMMARY = re.compile(r"seed(\d+)/pretrain_(" + "|".join(METHODS) + r")_(\d+)\.json$")
_RANDOM_RESULT = re.compile(
    r"seed(\d+)/(" + "|".join(small_study.EVALUATIONS) + r")_" + RANDOM + r"_[^/]+\.json$"
)


@dataclasses.dataclass
class CurveConfig(small_study.VariantsConfig):
    """Lengths, methods and locations; each field is a flag of `experiments/compute_curve.py`
    (except `train_steps`, the study's budget, which `steps` replaces)."""

    VARIANTS: ClassVar[dict] = METHODS

    run_dir: str = option("runs/compute_curve", "Runs go to <run_dir>/seed<S>/<method>_<steps>.")
    results_dir: str = option(
        os.path.join(small_study.StudyConfig.results_dir, RESULTS_SUBDIR),
        "JSONs in <results_dir>/seed<S>/; compute_curve.json, .md and .png in <results_dir> "
        "(the study's report reads <its results_dir>/compute_curve).",
    )
    steps: tuple[int, ...] = option(
        (1200, 2400, 4800), "Pretraining steps of each point (1x, 2x, 4x the study's budget)."
    )
    methods: tuple[str, ...] = option(tuple(METHODS), f"Methods, from {tuple(METHODS)}.")
    seeds: tuple[int, ...] = option((0,), "Seeds of every point.")
    layers: tuple[str, ...] = option(CURVE_LAYERS, small_study.TAPS_HELP)
    mixed_precision: str = inherited_option(
        PretrainConfig, "mixed_precision", note="(The study pins float32; this harness does not.)"
    )
    random_init: bool = option(
        True, "Also evaluate each seed's random initialisation (the baseline at 0 steps)."
    )
    davis_image_size: int = option(small_study.StudyConfig.davis_image_size, "DAVIS short side.")
    davis_max_frames: int | None = option(None, "Use only the first N frames of each sequence.")
    correspondence_image_size: int = option(
        small_study.StudyConfig.correspondence_image_size, "BSDS500 short side."
    )
    correspondence_images: int = option(
        small_study.StudyConfig.correspondence_images, "BSDS500 val photos warped."
    )

    @property
    def variants(self):
        return self.methods

    def seed_list(self):
        return self.seeds

    def validate(self):
        if not self.steps or min(self.steps) < 1 or len(set(self.steps)) < len(self.steps):
            raise ValueError(f"--steps={list(self.steps)}: expected distinct positive lengths.")
        if not self.methods or set(self.methods) - set(METHODS):
            raise ValueError(f"--methods={list(self.methods)}: expected some of {tuple(METHODS)}.")
        super().validate()

    def study(self):
        return super().study(
            layers=self.layers,
            davis_image_size=self.davis_image_size,
            davis_max_frames=self.davis_max_frames,
            correspondence_image_size=self.correspondence_image_size,
            correspondence_images=self.correspondence_images,
        )

    @staticmethod
    def run_name(method, steps):
        return f"{method}_{steps}"

    def pretrain_config(self, method, seed, steps=None):
        """The study's `method` run for `seed`, `steps` long (default: the first length), in
        this harness's precision and run folder."""
        steps = self.steps[0] if steps is None else steps
        model_dir = os.path.join(self.study().seed_dir(seed), self.run_name(method, steps))
        return self.variant_pretrain_config(
            method, seed, model_dir, run=method, train_steps=steps,
            mixed_precision=self.mixed_precision,
        )

    def runs(self):
        """`(steps, seed, method)` of every run, in the order they are made: by length,
        then seed, then method, so that each length's comparison is complete before the
        next (longer) one starts; with `random_init`, `(0, seed, RANDOM)` (evaluations
        only) after the seed's shortest runs."""
        runs = []
        for steps in sorted(self.steps):
            for seed in self.seeds:
                runs += [(steps, seed, method) for method in self.methods]
                if self.random_init and steps == min(self.steps):
                    runs.append((0, seed, RANDOM))
        return runs


def run(config, command):
    """Pretrains and evaluates every run (resuming), rewriting the curve's JSON, table and
    figure after each; returns the last JSON's dict."""
    study = config.study()
    evaluations = small_study.Evaluations(study)
    payload = None
    for steps, seed, method in config.runs():
        if method == RANDOM:
            encoder = {RANDOM: study.encoders(seed)[RANDOM]}
        else:
            name = config.run_name(method, steps)
            pretrain_config = config.pretrain_config(method, seed, steps)
            small_study.pretrain_and_summarize(
                pretrain_config,
                small_study.pretrain_summary_path(study.seed_results(seed), name),
                command_flags=small_study.PRETRAIN_FLAGS + tuple(METHODS[method]),
            )
            keras.backend.clear_session()
            encoder = {name: pretrain_config.model_dir}
        small_study.evaluate_encoders(
            evaluations, encoder, config.layers, seed, study.seed_results(seed),
            force=config.force,
        )
        payload = write_outputs(config, command)
    return payload


def found_runs(results_dir):
    """`{(method, steps): [seeds]}` of the runs with a pretraining summary in
    `results_dir` (their seed folders), and `(RANDOM, 0)` for the seeds with a result of
    their random initialisation."""
    runs = {}
    for path in tf.io.gfile.glob(os.path.join(results_dir, "seed*", "*.json")):
        path = path.replace(os.sep, "/")
        match = _RUN_SUMMARY.search(path)
        if match:
            seed, key = int(match[1]), (match[2], int(match[3]))
        elif match := _RANDOM_RESULT.search(path):
            seed, key = int(match[1]), (RANDOM, 0)
        else:
            continue
        runs.setdefault(key, set()).add(seed)
    return {key: sorted(seeds) for key, seeds in sorted(runs.items())}


def found_layers(seed_results, name):
    """The taps of encoder `name` with a result JSON in `seed_results` (sorted)."""
    layers = set()
    for evaluation in small_study.EVALUATIONS:
        prefix = f"{evaluation}_{name}_"
        for path in tf.io.gfile.glob(os.path.join(seed_results, prefix + "*.json")):
            layer = os.path.basename(path)[len(prefix) : -len(".json")]
            if is_layer(layer):  # Not when another encoder's name extends this one's.
                layers.add(layer)
    return sorted(layers)


def curves(config):
    """`({method: {layer: {steps: {"seeds": [...], column: [value per seed]}}}}, training
    record)` from the result JSONs in `config.results_dir`, for `config.layers` and every
    other tap evaluated there (a tap added later with `--layers` joins the curve); refuses
    runs of different precision or direction (`small_study.check_same_training`)."""
    study = config.study()
    trainings = {}
    points = {}
    for (method, steps), seeds in found_runs(config.results_dir).items():
        name = RANDOM if method == RANDOM else config.run_name(method, steps)
        for seed in seeds:
            layers = dict.fromkeys(
                (*config.layers, *found_layers(study.seed_results(seed), name))
            )
            table = small_study.collect(study.seed_results(seed), [name], layers, trainings)
            for (_, layer), row in table.items():
                point = points.setdefault(method, {}).setdefault(layer, {}).setdefault(
                    str(steps), {"seeds": []}
                )
                # Every column's list is aligned with "seeds" (None where a seed lacks it).
                for column in set(point) - {"seeds"} | set(row):
                    point.setdefault(column, [None] * len(point["seeds"])).append(
                        row.get(column)
                    )
                point["seeds"].append(seed)
    small_study.check_same_training(trainings)
    records = [record for record in trainings.values() if record is not None]
    return points, (records[0] if records else None)


def ordered(points):
    """`[(method, layer, steps, point)]` of `curves`' points (as read back from the
    key-sorted JSON or as `curves` built them): methods in `METHODS` order, random init
    last, `CURVE_TAP` first, then taps by name, lengths ascending."""
    return [
        (method, layer, steps, point)
        for method in (*METHODS, RANDOM)
        for layer in sorted(
            points.get(method, {}), key=lambda tap: (tap != CURVE_TAP, tap)
        )
        for steps, point in sorted(points[method][layer].items(), key=lambda item: int(item[0]))
    ]


def write_outputs(config, command):
    """Writes `compute_curve.json`, `.md` and `.png` in `results_dir` from the result JSONs
    present; returns the JSON's dict."""
    path = os.path.join(config.results_dir, CURVE_FILE)
    commands = []
    if tf.io.gfile.exists(path + ".json"):
        commands = storage.read_json(path + ".json")["commands"]
    if list(command) not in commands:
        commands.append(list(command))
    points, training = curves(config)
    payload = {
        "command": list(command),
        "commands": commands,
        "training": training,
        "vader_fields": VADER_FIELDS,
        "config": dataclasses.asdict(config),
        "curves": points,
    }
    storage.write_json_atomic(path + ".json", payload)
    storage.write_atomic(path + ".md", table(payload))
    plot(payload, path + ".png")
    return payload


def _label(method, layer):
    served = f" ({CURVE_TAP_LABEL})" if layer == CURVE_TAP else ""
    return f"{small_study.ENCODER_NAMES[method]} {layer}{served}"


def precision_sentence(payload):
    """What the curve's runs trained in, from `compute_curve.json`'s dict."""
    training = payload["training"]
    if training is None:
        return "Precision: not recorded."
    direction = "symmetric loss" if training["symmetric_loss"] else "one-direction loss"
    asked = payload["config"]["mixed_precision"]
    source = (
        "`PretrainConfig`'s default precision, `auto`, on the training machine"
        if asked == "auto" else f"`--mixed_precision={asked}`"
    )
    return (
        f"Every run trained in `{training['mixed_precision']}` ({source}; the study's own "
        f"runs pin float32), {direction}."
    )


def table(payload):
    """Markdown: the precision, then per method, tap and length the mean ± std over the
    seeds of each plotted metric (random init at 0 steps); then, per length and metric,
    VADeR's `CURVE_TAP` against each baseline's best tap and the margin over the
    strongest of them."""
    points = payload["curves"]
    lines = [
        precision_sentence(payload),
        "",
        "| Method | Tap | steps | seeds | " + " | ".join(PLOTTED.values()) + " |",
        "|" + " --- |" * (4 + len(PLOTTED)),
    ]
    for method, layer, steps, point in ordered(points):
        cells = [small_study.format_cell(point.get(column, [])) for column in PLOTTED]
        seeds = ", ".join(map(str, point["seeds"]))
        lines.append(
            f"| {small_study.ENCODER_NAMES[method]} | `{layer}` | {steps} | {seeds} | "
            + " | ".join(cells) + " |"
        )
    margins = margin_rows(points)
    if margins:
        lines += [
            "",
            f"Margin: VADeR's `{CURVE_TAP}` ({CURVE_TAP_LABEL}) against the best tap of each "
            "baseline (MoCo v2 at the same length; random init) and its margin over the "
            "strongest of them (means over the seeds all of them have at that length; "
            "positive = VADeR ahead).",
            "",
            f"| steps | seeds | metric | VADeR `{CURVE_TAP}` | MoCo v2's best tap "
            "| random init's best tap | margin over the strongest |",
            "|" + " --- |" * 7,
            *margins,
        ]
    return "\n".join(lines) + "\n"


def _at_seeds(point, column, seeds):
    """`point`'s values of `column` for the seeds in `seeds`."""
    return [v for seed, v in zip(point["seeds"], point.get(column, [])) if seed in seeds]


def best_tap(taps, steps, column, seeds):
    """`(layer, mean over seeds)` of the tap of `taps` (`{layer: {steps: point}}`) with the
    highest mean of `column` at `steps` over `seeds`, among the taps measured at all of
    `seeds`; None if none is."""
    means = {
        layer: small_study.mean_std(_at_seeds(by_steps[steps], column, seeds))[0]
        for layer, by_steps in taps.items()
        if steps in by_steps and set(seeds) <= set(by_steps[steps]["seeds"])
    }
    means = {layer: mean for layer, mean in means.items() if mean is not None}
    if not means:
        return None
    layer = max(means, key=means.get)
    return layer, means[layer]


def baselines(points, steps):
    """`[(taps, at)]` VADeR's `CURVE_TAP` at `steps` is compared with: MoCo v2's taps at
    the same length, random init's at 0 steps."""
    return [(points.get("moco", {}), steps), (points.get(RANDOM, {}), "0")]


def shared_seeds(points, steps):
    """The seeds of VADeR's `CURVE_TAP` at `steps` that each baseline has too, so that a
    margin compares the same seeds (a second seed run only at one length must not shift
    the others' margins)."""
    seeds = set(points["vader"][CURVE_TAP][steps]["seeds"])
    for taps, at in baselines(points, steps):
        measured = [by_steps[at]["seeds"] for by_steps in taps.values() if at in by_steps]
        if measured:
            seeds &= set().union(*measured)
    return sorted(seeds)


def margin_rows(points):
    """The margin table's rows, per length of VADeR's `CURVE_TAP` and plotted metric, each
    over the seeds shared with the baselines (`shared_seeds`)."""
    rows = []
    vader = points.get("vader", {}).get(CURVE_TAP, {})
    for steps in sorted(vader, key=int):
        seeds = shared_seeds(points, steps)
        for column, title in PLOTTED.items():
            ours = small_study.mean_std(_at_seeds(vader[steps], column, seeds))[0]
            if ours is None:
                continue
            best = [best_tap(taps, at, column, seeds) for taps, at in baselines(points, steps)]
            cells = [f"`{tap[0]}` {tap[1]:.3f}" if tap else "n/a" for tap in best]
            measured = [tap[1] for tap in best if tap]
            margin = f"{ours - max(measured):+.3f}" if measured else "n/a"
            rows.append(
                f"| {steps} | {', '.join(map(str, seeds))} | {title} | {ours:.3f} | "
                + " | ".join(cells) + f" | {margin} |"
            )
    return rows


def plot(payload, path):
    """The figure: one panel per plotted metric, one line per method and tap against
    steps, random init's taps as horizontal lines."""
    from vader_tf.eval import plots  # Needs matplotlib (the `results` extra).

    lines, references = {}, {}
    for method, layer, steps, point in ordered(payload["curves"]):
        for column in PLOTTED:
            mean, std = small_study.mean_std(point.get(column, []))
            if method == RANDOM:
                references.setdefault(f"{_label(method, layer)}, 0 steps", {})[column] = mean
            else:
                line = lines.setdefault(_label(method, layer), {})
                line.setdefault(column, []).append((int(steps), mean, std))
    return plots.plot_metric_curves(lines, PLOTTED, path, references=references)


def report_section(results_dir, report_dir):
    """Markdown lines of the study report's "Compute curve" section, from
    `<results_dir>/compute_curve/compute_curve.json` (none when it does not exist): the
    commands, the table (rewritten from the JSON) and the figure."""
    path = os.path.join(results_dir, RESULTS_SUBDIR, CURVE_FILE)
    if not tf.io.gfile.exists(path + ".json"):
        return []
    payload = storage.read_json(path + ".json")
    storage.write_atomic(path + ".md", table(payload))
    lines = [
        "## Compute curve",
        "",
        "VADeR and MoCo v2 (the study's runs, " + (
            f"VADeR with {payload['vader_fields']}" if payload["vader_fields"]
            else "VADeR's default"
        ) + ") pretrained for several lengths, each its own run from the seed's random "
        f"initialisation, evaluated with the study's protocols at `{CURVE_TAP}` "
        f"({CURVE_TAP_LABEL}) and at every other tap in the table, beside each seed's random "
        "initialisation (0 steps). "
        + precision_sentence(payload) + " Commands:",
        "",
        "```",
        *(shlex.join(command) for command in payload["commands"]),
        "```",
        "",
        table(payload).split("\n", 2)[2].strip(),
        "",
    ]
    if tf.io.gfile.exists(path + ".png"):
        lines += [
            f"![Metrics against pretraining steps]({os.path.relpath(path + '.png', report_dir)})",
            "",
        ]
    return lines
