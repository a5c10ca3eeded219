"""The FREE paper's figures 4-7 drawn from plain data (arrays, lists of points, a PNG grid).

Plotting stays apart from running: every function takes data a report already holds, so a
figure is regenerated from records without training anything. Figures are drawn on a bare
`Figure` with the Agg canvas (no pyplot, no global state, safe in threads and headless CI)
and written atomically; PNGs carry no software/version metadata, so identical inputs give
byte-identical files and committed reports do not churn.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.ticker import FixedLocator, NullLocator

from dfmlbench.errors import UserError
from dfmlbench.paths import write_bytes_atomic

DPI = 150
TSNE_TITLE = "t-SNE of the same images' features through different pre-trained models"
TEACHERS_TITLE = "Accuracy vs. number of pre-trained models"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Render to bytes, then write atomically: readers never see half a PNG."""
    path = Path(path)
    buf = io.BytesIO()
    # "Software": None drops matplotlib's version stamp, the only varying PNG metadata.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())
    return path


def _palette(n: int) -> list[tuple[float, ...]]:
    """Qualitative colours: tab10 up to 10 series, tab20 up to 20, then tab20 repeated."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    size = 10 if n <= 10 else 20
    return [cmap(i % size) for i in range(n)]


def plot_teacher_tsne(features: np.ndarray, teacher_names: list[str], path: Path, *,
                      seed: int = 0, title: str = TSNE_TITLE) -> Path:
    """Fig. 4: one joint 2-D t-SNE of the same N images seen by T teachers, coloured by teacher.

    All T*N points are embedded together so distances between teachers' clusters are
    comparable: separated clusters show that teachers map the same images differently
    (the model heterogeneity FREE addresses). Numbers beside points are image indices.
    """
    from sklearn.manifold import TSNE  # heavy import, only needed here

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 3:
        raise ValueError(f"features must have shape (teachers, images, dim), got {features.shape}")
    t, n, d = features.shape
    if len(teacher_names) != t:
        raise ValueError(f"{len(teacher_names)} teacher names for {t} teachers")
    points = t * n
    if points < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {t} teachers x {n} images = {points}")
    if d < 1:
        raise ValueError("features have dimension 0")
    perplexity = min(30.0, (points - 1) / 3.0)
    # PCA initialisation needs at least 2 feature dimensions.
    tsne = TSNE(n_components=2, init="pca" if d >= 2 else "random", random_state=seed,
                perplexity=perplexity)
    xy = tsne.fit_transform(features.reshape(points, d)).reshape(t, n, 2)

    fig = _new_figure(7.5 if t > 10 else 6.8, 5.2)
    ax = fig.add_subplot()
    for i, (name, colour) in enumerate(zip(teacher_names, _palette(t))):
        ax.scatter(xy[i, :, 0], xy[i, :, 1], s=28, color=colour, edgecolors="white",
                   linewidths=0.4, label=name)
        if points <= 200:
            for j in range(n):
                ax.annotate(str(j), xy[i, j], xytext=(2.5, 2.5), textcoords="offset points",
                            fontsize=5.5, color="0.35")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"{title}\n{t} teachers x {n} images, perplexity {perplexity:.3g}"
                 + ("; numbers: image index" if points <= 200 else ""), fontsize=10)
    ax.legend(title="teacher", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
              title_fontsize=9, ncols=2 if t > 16 else 1, frameon=False)
    return _save(fig, path)


def _aggregate(runs: Sequence[Sequence[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray, np.ndarray]:
    """Steps (union over runs), mean, sample sd and count of the runs that have each step."""
    by_run = [{float(s): float(v) for s, v in run} for run in runs]
    steps = np.array(sorted(set().union(*by_run)), dtype=np.float64)
    mean, sd, count = (np.empty(len(steps)) for _ in range(3))
    for k, step in enumerate(steps):
        values = np.array([run[step] for run in by_run if step in run])
        mean[k] = values.mean()
        sd[k] = values.std(ddof=1) if len(values) >= 2 else 0.0
        count[k] = len(values)
    return steps, mean, sd, count


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; windows shrink at the edges so no point is dropped."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1:
        return values.copy()
    csum = np.concatenate([[0.0], np.cumsum(values)])
    start = np.arange(len(values)) - (window - 1) // 2
    lo = np.clip(start, 0, len(values))
    hi = np.clip(start + window, 0, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


def plot_curves(series: dict[str, list[list[tuple[float, float]]]], path: Path, *,
                xlabel: str, ylabel: str, title: str) -> Path:
    """Fig. 5: a quantity over training (e.g. gradient inner product, BELL vs ERM) per label.

    Several seeds: mean line and a ±1 sd band, so a difference between labels can be judged
    against seed noise. One seed: the raw curve faint plus a moving average, so a noisy
    per-step quantity stays readable. A dashed y=0 line marks the sign change that matters
    for gradient agreement.
    """
    if not series:
        raise ValueError("no series to plot")
    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    lows, highs = [], []
    for (label, runs), colour in zip(series.items(), _palette(len(series))):
        runs = [run for run in runs if len(run)]
        if not runs:
            raise ValueError(f"series '{label}' has no points")
        steps, mean, sd, count = _aggregate(runs)
        if len(runs) == 1:
            window = max(1, round(len(steps) / 10))
            if window == 1:  # too few points to smooth: the curve itself
                ax.plot(steps, mean, color=colour, linewidth=1.8, label=f"{label} (1 seed)")
            else:  # the raw curve faint, unlabelled; its moving average carries the legend
                ax.plot(steps, mean, color=colour, alpha=0.3, linewidth=0.8)
                ax.plot(steps, moving_average(mean, window), color=colour, linewidth=1.8,
                        label=f"{label} (1 seed; moving average of {window}, raw faint)")
            lows.append(mean.min())
            highs.append(mean.max())
            continue
        ax.plot(steps, mean, color=colour, linewidth=1.8,
                label=f"{label} (mean; band: ±1 sd over {len(runs)} seeds)")
        banded = count >= 2
        ax.fill_between(steps, mean - sd, mean + sd, where=banded, color=colour, alpha=0.2,
                        linewidth=0, interpolate=False)
        lows.append(mean.min())
        highs.append(mean.max())
    if min(lows) < 0 < max(highs):
        ax.axhline(0.0, color="0.3", linestyle="--", linewidth=0.8, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


CostCurve = list[tuple[float, float, float]]  # (recovery seconds, training seconds, val accuracy) per validation


def plot_accuracy_vs_cost(series: dict[str, list[CostCurve]], path: Path, *, title: str) -> Path:
    """Meta-val accuracy against cumulative recovery seconds (left) and training seconds
    (right, wall less validation), one line per run, one colour per method: "faster and
    better" as curves rather than one point per method. A method that recovers no data has
    no left-panel line."""
    if not series:
        raise ValueError("no series to plot")
    fig = _new_figure(11.0, 4.4)
    left, right = fig.subplots(1, 2, sharey=True)
    for (label, runs), colour in zip(series.items(), _palette(len(series))):
        for index, run in enumerate(runs):
            if not run:
                raise ValueError(f"series '{label}' has an empty run")
            recovery, train, accuracy = (np.array(column, dtype=np.float64) for column in zip(*run))
            name = label if index == 0 else None
            left.plot(recovery / 60.0, accuracy, color=colour, marker="o", markersize=3, linewidth=1.4, label=name)
            right.plot(train / 60.0, accuracy, color=colour, marker="o", markersize=3, linewidth=1.4, label=name)
    left.set_xlabel("cumulative data-recovery time (minutes)")
    right.set_xlabel("cumulative training time, validation excluded (minutes)")
    left.set_ylabel("meta-val accuracy (%)")
    for ax in (left, right):
        ax.grid(alpha=0.25)
    left.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_vs_teachers(series: dict[int, dict[str, list[tuple[int, float, float]]]],
                              path: Path, *, title: str = TEACHERS_TITLE, way: int = 5) -> Path:
    """Fig. 6: accuracy against pool size, one panel per shot, with 95% CI error bars.

    The question is whether more (heterogeneous) teachers help; error bars make it visible
    when a difference is within episode noise. Pool sizes usually grow geometrically, so a
    range over 10x uses a log x axis labelled with the actual pool sizes.
    """
    if not series:
        raise ValueError("no shots to plot")
    shots = sorted(series)
    fig = _new_figure(max(6.0, 4.6 * len(shots)), 4.6)
    axes = fig.subplots(1, len(shots), sharey=True, squeeze=False)[0]
    labels = list(dict.fromkeys(label for shot in shots for label in series[shot]))
    colours = dict(zip(labels, _palette(len(labels))))
    markers = dict(zip(labels, "osD^vP*Xh<>" * (len(labels) // 11 + 1)))
    for k, (shot, ax) in enumerate(zip(shots, axes)):
        points = {label: sorted(pts) for label, pts in series[shot].items() if pts}
        if not points:
            raise ValueError(f"shot {shot} has no points")
        xs = sorted({int(p[0]) for pts in points.values() for p in pts})
        if min(xs) < 1:
            raise ValueError(f"number of teachers must be >= 1, got {min(xs)}")
        log = max(xs) / min(xs) > 10
        span = max(xs) - min(xs) or 1.0
        for j, (label, pts) in enumerate(points.items()):
            # A small horizontal dodge keeps overlapping error bars of several labels apart.
            offset = j - (len(points) - 1) / 2
            x = np.array([p[0] for p in pts], dtype=np.float64)
            x = x * 1.03 ** offset if log else x + 0.012 * span * offset
            y = np.array([p[1] for p in pts], dtype=np.float64)
            ci = np.array([p[2] for p in pts], dtype=np.float64)
            ax.errorbar(x, y, yerr=ci, color=colours[label], marker=markers[label], markersize=5,
                        capsize=3, linewidth=1.5, elinewidth=1, label=label)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.set_xticklabels([str(x) for x in xs])
        if log:
            lo, hi = math.log10(min(xs)), math.log10(max(xs))
            pad = 0.06 * (hi - lo)
            ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
        ax.set_title(f"({chr(ord('a') + k)}) {way}-way {shot}-shot")
        ax.set_xlabel("number of pre-trained models")
        if k == 0:
            ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    # One panel is narrow: the title goes on two lines so it is never clipped.
    fig.suptitle(f"{title}\n(error bars: 95% CI)" if len(shots) == 1 else f"{title} (error bars: 95% CI)")
    return _save(fig, path)


def plot_task_grid(image_path: Path, path: Path, *, way: int, per_class: int, title: str,
                   max_per_class: int = 10) -> Path:
    """Fig. 7: a saved grid of recovered (or real) task images, one row per class, labelled.

    The grid comes from `torchvision.utils.save_image(nrow=per_class, padding=1)`; rows are
    equally spaced over the image height, so each class label sits at its row's centre.
    """
    image_path = Path(image_path)
    if not image_path.is_file():
        raise UserError(f"task grid image {image_path} is missing; rerun the cell that saves it")
    if way < 1 or per_class < 1:
        raise ValueError(f"way and per_class must be >= 1, got way={way}, per_class={per_class}")
    image = imread(image_path)
    shown = min(per_class, max_per_class)  # wider grids make each image too small to see
    if shown < per_class:
        cell = (image.shape[1] - 1) // per_class  # image side + 1 px of padding
        image = image[:, :1 + shown * cell]
    height, width = image.shape[:2]
    fig_width = 1.2 + 0.75 * shown
    fig = _new_figure(fig_width, 0.9 + fig_width * height / width * 0.85)
    ax = fig.add_subplot()
    ax.imshow(image, interpolation="nearest", cmap="gray" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([(r + 0.5) * height / way for r in range(way)],
                  [f"class {r + 1}" for r in range(way)])
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"{shown} of {per_class} images per class" if shown < per_class
                  else f"{per_class} images per class")
    ax.set_title(title)
    return _save(fig, path)


__all__ = ["moving_average", "plot_accuracy_vs_teachers", "plot_curves", "plot_task_grid",
           "plot_teacher_tsne"]
