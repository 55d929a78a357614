"""Figures of the stochastic model: aggregates in 3D (paper Fig. 2) and Fig. 4.

Needs matplotlib (the ``plot`` extra); it is imported here only, with the Agg backend so that
figures render on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.io import atomic_write

# The paper's colours: WO3 blue, TiO2 orange.
MATERIAL_COLORS = {0: "#1f5fbf", 1: "#f28e2b"}


def import_pyplot():
    """``matplotlib.pyplot`` on the Agg backend (renders without a display).

    Raises:
        ImportError: matplotlib is missing; the message names the extra to install.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("figures need matplotlib: pip install 'hagg_tf[plot]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw_aggregate(axes, aggregate: Aggregate, resolution: int = 14) -> None:
    """Draws the particles as shaded spheres on a 3D ``axes`` (equal aspect, nm)."""
    polar, azimuth = np.meshgrid(np.linspace(0, np.pi, resolution),
                                 np.linspace(0, 2 * np.pi, 2 * resolution))
    unit = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth),
                     np.cos(polar)])
    for position, radius, label in zip(aggregate.positions, aggregate.radii, aggregate.labels):
        surface = position[:, None, None] + radius * unit
        axes.plot_surface(*surface, color=MATERIAL_COLORS[int(label)], linewidth=0,
                          antialiased=False, shade=True)
    extent = np.abs(aggregate.positions).max() + aggregate.radii.max()
    for setter in (axes.set_xlim, axes.set_ylim, axes.set_zlim):
        setter(-extent, extent)
    axes.set_box_aspect((1, 1, 1))
    axes.set_axis_off()


def save_png(figure, path: str | Path, dpi: int = 110, bbox_inches: str | None = "tight"
             ) -> Path:
    """Saves ``figure`` as PNG at ``path`` through :func:`~hagg_tf.model.io.atomic_write`.

    ``bbox_inches="tight"`` crops to the drawn content; None keeps the figure's size.
    """
    def write(stream):
        figure.savefig(stream, format="png", dpi=dpi, bbox_inches=bbox_inches)
    return atomic_write(path, write)


def plot_aggregates_3d(aggregates: Sequence[Aggregate], path: str | Path,
                       columns: int = 3) -> Path:
    """Paper Fig. 2: a grid of aggregates, each titled with its θ, saved as PNG."""
    plt = import_pyplot()
    rows = (len(aggregates) + columns - 1) // columns
    figure = plt.figure(figsize=(4 * columns, 4 * rows))
    for number, aggregate in enumerate(aggregates):
        axes = figure.add_subplot(rows, columns, number + 1, projection="3d")
        draw_aggregate(axes, aggregate)
        if aggregate.params is not None:
            theta = aggregate.params
            axes.set_title(f"θ = ({theta.fractal_dimension:g}, {theta.mixing_ratio:g}, "
                           f"{theta.wo3_cluster_size}, {theta.tio2_cluster_size}), "
                           f"N = {aggregate.size}", fontsize=9)
    figure.legend(handles=[plt.Line2D([], [], marker="o", linestyle="", color=color,
                                      label=name)
                           for name, color in (("WO3", MATERIAL_COLORS[0]),
                                               ("TiO2", MATERIAL_COLORS[1]))],
                  loc="lower center", ncol=2)
    path = save_png(figure, path)
    plt.close(figure)
    return path


def plot_fig4(fractal_sample, mixing_sample, path: str | Path) -> Path:
    """Paper Fig. 4: D_f(A) against θ_Df and ρ(A) against θ_ρ, coloured by density.

    Args:
        fractal_sample, mixing_sample: ``model_statistics.Fig4Sample`` draws.
        path: PNG destination.
    """
    from scipy.stats import gaussian_kde

    plt = import_pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    rng = np.random.default_rng(0)
    for ax, sample, preset_name, empirical_name in (
            (axes[0], fractal_sample, "θ_Df", "D_f(A)"),
            (axes[1], mixing_sample, "θ_ρ", "ρ(A)")):
        finite = np.isfinite(sample.empirical)
        preset, empirical = sample.preset[finite], sample.empirical[finite]
        step = np.diff(np.unique(preset)).min() if np.unique(preset).size > 1 else 0.1
        jitter = preset + rng.uniform(-0.3, 0.3, preset.size) * step
        density = np.empty_like(empirical)
        for value in np.unique(preset):  # density along each column, as in the paper's plot
            chosen = preset == value
            values = empirical[chosen]
            density[chosen] = (gaussian_kde(values)(values) if np.ptp(values) > 0
                               else np.ones(values.size))
        ax.scatter(jitter, empirical, c=density, s=4, cmap="viridis")
        means = [empirical[preset == value].mean() for value in np.unique(preset)]
        ax.plot(np.unique(preset), means, "r_", markersize=14, label="mean")
        low, high = preset.min() - step, preset.max() + step
        ax.plot([low, high], [low, high], "k--", linewidth=0.8, label="identity")
        ax.set_xlabel(preset_name)
        ax.set_ylabel(empirical_name)
        ax.legend(loc="upper left")
    figure.tight_layout()
    path = save_png(figure, path)
    plt.close(figure)
    return path
