"""PNG figures of a comparison: pretraining curves, metric bars, metric against compute,
feature pictures.

Needs matplotlib, an optional dependency: `pip install vader-tf[results]`. Every function
writes one small PNG (non-interactive Agg backend) and returns its path.
"""

import io

from vader_tf import storage

try:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
except ImportError as error:  # pragma: no cover - depends on the environment.
    raise ImportError(
        "Plotting results needs matplotlib: pip install 'vader-tf[results]'."
    ) from error

DPI = 100


def _save(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    pyplot.close(figure)
    storage.write_atomic(path, buffer.getvalue())
    return path


def plot_pretraining(histories, path, metrics=("loss", "accuracy")):
    """Curves of `metrics` against the step, one line per run.

    Args:
        histories: `{run label: [{"step": ..., metric: ...}, ...]}`.
        path: output PNG.
        metrics: the metrics plotted, one panel each.
    """
    figure, axes = pyplot.subplots(
        1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False
    )
    axes = axes[0]
    for axis, metric in zip(axes, metrics):
        for label, history in histories.items():
            points = [(entry["step"], entry[metric]) for entry in history if metric in entry]
            if points:
                axis.plot(*zip(*points), label=label)
        axis.set_xlabel("step")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("Pretraining (training-batch metrics; not comparable across methods)", y=1.02)
    return _save(figure, path)


def plot_metric_bars(values, title, path):
    """One bar per `{label: value}` entry, annotated with its value."""
    figure, axis = pyplot.subplots(figsize=(1.3 * len(values) + 1, 3.5))
    labels = list(values)
    heights = [values[label] or 0.0 for label in labels]
    bars = axis.bar(range(len(labels)), heights, color="tab:blue")
    for bar, height in zip(bars, heights):
        axis.annotate(
            f"{height:.3f}", (bar.get_x() + bar.get_width() / 2, height), ha="center",
            va="bottom", fontsize=8,
        )
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_title(title)
    axis.set_ylim(0, max(heights + [1e-3]) * 1.2)
    return _save(figure, path)


def plot_feature_pictures(image, pictures, path, columns=4):
    """`{label: uint8 RGB picture}` (e.g. PCA of features) in a grid, after `image`
    unless it is None (leave out photos whose licence forbids redistribution)."""
    panels = dict(pictures) if image is None else {"image": image, **pictures}
    rows = -(-len(panels) // columns)
    height, width = next(iter(panels.values())).shape[:2]
    scale = 2.5 / height
    figure, axes = pyplot.subplots(
        rows, columns, figsize=(columns * width * scale, rows * (height * scale + 0.3)),
        squeeze=False,
    )
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (label, picture) in zip(axes.ravel(), panels.items()):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(label, fontsize=9)
    return _save(figure, path)


def plot_metric_curves(curves, titles, path, xlabel="pretraining steps", references=None):
    """One panel per metric: each curve's mean against x (log scale), with the seed std
    as error bars where there is one, and reference values as grey horizontal lines.

    Args:
        curves: `{line label: {metric: [(x, mean, std or None), ...]}}`.
        titles: `{metric: panel title}`, in panel order.
        path: output PNG.
        references: `{label: {metric: value or None}}`, e.g. an untrained baseline.
    """
    figure, axes = pyplot.subplots(
        1, len(titles), figsize=(4.5 * len(titles), 3.5), squeeze=False
    )
    axes = axes[0]
    for axis, (metric, title) in zip(axes, titles.items()):
        for label, metrics in curves.items():
            points = sorted(point for point in metrics.get(metric, []) if point[1] is not None)
            if not points:
                continue
            xs, means, stds = zip(*points)
            errors = [std or 0.0 for std in stds] if any(stds) else None
            axis.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)
        for index, (label, values) in enumerate((references or {}).items()):
            if values.get(metric) is not None:
                style = (":", "-.", "--")[index % 3]
                axis.axhline(values[metric], linestyle=style, color="0.4", label=label)
        axis.set_xscale("log")
        xs = sorted({point[0] for metrics in curves.values() for point in metrics.get(metric, [])})
        if xs:
            axis.set_xticks(xs, [str(x) for x in xs])
            axis.minorticks_off()
        axis.set_xlabel(xlabel)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(  # Below the panels, clear of the curves.
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8
    )
    return _save(figure, path)
