"""Figures of the STEM simulation: a Fig.-3-like aggregate/image pair, the HAADF tables, the
field-of-view coverage that fixes the default pixel size, and a table convergence check.

Needs matplotlib (the optional 'plot' extra). Figures are PNGs under --output.

Examples:
  python tools/plot_stem.py --figure=fig3 --theta=1.8,0.5,3,2 --seed=3
  python tools/plot_stem.py --figure=tables
  python tools/plot_stem.py --figure=coverage --per_parameter=5 --workers=2
  python tools/plot_stem.py --figure=convergence --convergence=A.json,B.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags

from hagg_tf.cli import (MAX_IMAGE_SIZE, check_output_dir, define_pixel_size, define_seed, fail,
                         reject_extra_arguments, run_tool)
from hagg_tf.model.parameters import MAX_SEED
from hagg_tf.stem import render as render_module

_FIGURE = flags.DEFINE_enum("figure", "fig3", ["fig3", "tables", "coverage", "convergence"],
                            "Which figure.")
_OUTPUT = flags.DEFINE_string("output", "work/stem/figures", "Output directory.")
_THETA = flags.DEFINE_list("theta", ["1.8", "0.5", "3", "2"], "θ for --figure=fig3.")
_AGGREGATE = flags.DEFINE_string("aggregate", None, "Aggregate file for fig3 instead of --theta.")
_SEED = define_seed(3, "Seed (fig3: aggregate and image; coverage: draws).")
_INDEX = flags.DEFINE_integer("index", 0, "Index of the draw for fig3.", lower_bound=0,
                              upper_bound=MAX_SEED)
_TABLES = flags.DEFINE_string("tables", None, "HAADF table file (default: shipped).")
_PIXEL = define_pixel_size(render_module.DEFAULT_PIXEL_SIZE_NM,
                           "Pixel size, nm (fig3, coverage).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Pixels per edge.", lower_bound=8,
                                   upper_bound=MAX_IMAGE_SIZE)
_PER_PARAMETER = flags.DEFINE_integer("per_parameter", 5, "Coverage: aggregates per θ.",
                                      lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", 1, "Coverage: processes.", lower_bound=1)
_HALF_EXTENTS = flags.DEFINE_string("half_extents", None,
                                    "Coverage: .npy of half-extents to reuse (else drawn, and saved).")
_CONVERGENCE = flags.DEFINE_list("convergence", None, "Two per-table JSON results to compare.")


def _pyplot():
    from hagg_tf.evaluation.figures import import_pyplot

    try:
        return import_pyplot()
    except ImportError as error:
        fail(str(error))


def _sphere_mesh(resolution=12):
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, resolution), np.linspace(0, np.pi, resolution // 2 + 1))
    return np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v)


def figure_fig3(out_dir: Path) -> Path:
    """3D aggregate (WO3 blue, TiO2 orange) beside its simulated HAADF-STEM image (paper Fig. 3)."""
    plt = _pyplot()
    from hagg_tf.stem.tables import TableError, load_tables
    try:
        tables = load_tables(_TABLES.value)
    except TableError as error:
        fail(str(error))
    if _AGGREGATE.value:
        from hagg_tf.model.io import load_aggregate
        try:
            aggregate = load_aggregate(_AGGREGATE.value)
        except Exception as error:  # a bad file is a usage error, not a crash
            fail(f"{_AGGREGATE.value}: not a readable aggregate file ({error})")
    else:
        from hagg_tf.model.generator import sample_aggregate
        from hagg_tf.model.parameters import ModelParameters, ParameterError
        try:
            params = ModelParameters.from_sequence(float(v) for v in _THETA.value)
        except (ParameterError, ValueError) as error:
            fail(f"--theta: {error}")
        aggregate = sample_aggregate(params, _SEED.value, _INDEX.value)
    image = render_module.render_stem(aggregate, seed=_SEED.value, index=_INDEX.value, tables=tables,
                                      pixel_size_nm=_PIXEL.value, image_size=_IMAGE_SIZE.value)
    figure = plt.figure(figsize=(11, 5.2))
    axes3d = figure.add_subplot(1, 2, 1, projection="3d")
    sx, sy, sz = _sphere_mesh()
    center = aggregate.center_of_mass()
    colors = {0: "tab:blue", 1: "tab:orange"}
    for position, radius, label in zip(aggregate.positions - center, aggregate.radii, aggregate.labels):
        axes3d.plot_surface(position[0] + radius * sx, position[1] + radius * sy,
                            position[2] + radius * sz, color=colors[int(label)], linewidth=0,
                            shade=True, antialiased=False)
    extent = np.abs(aggregate.positions - center).max() + aggregate.radii.max()
    for setter in (axes3d.set_xlim, axes3d.set_ylim, axes3d.set_zlim):
        setter(-extent, extent)
    axes3d.set_box_aspect((1, 1, 1))
    axes3d.set_xlabel("x / nm")
    axes3d.set_ylabel("y / nm")
    axes3d.set_zlabel("z (beam) / nm")
    axes3d.view_init(elev=25, azim=-60)
    theta = aggregate.params
    axes3d.set_title(f"{aggregate.size} particles" + (f", {theta}" if theta else "")
                     + "\nWO$_3$ blue, TiO$_2$ orange", fontsize=9)
    axes_image = figure.add_subplot(1, 2, 2)
    metadata = image.metadata
    half = 0.5 * image.counts.shape[0] * metadata["pixel_size_nm"]
    shown = axes_image.imshow(image.counts, cmap="gray", origin="lower",
                              extent=(-half, half, -half, half))
    # Show the same lateral window as the 3D view (the full frame is mostly empty by design).
    window = min(1.1 * extent, half)
    axes_image.set_xlim(-window, window)
    axes_image.set_ylim(-window, window)
    axes_image.set_xlabel("x / nm")
    axes_image.set_ylabel("y / nm")
    axes_image.set_title(f"HAADF-STEM (crop of the {image.counts.shape[1]}×{image.counts.shape[0]} "
                         f"frame), {metadata['pixel_size_nm']} nm/px,\n"
                         f"{metadata['dose_e_per_A2']:g} e/Å² "
                         f"({metadata['electrons_per_pixel']:.0f} e/px)", fontsize=9)
    figure.colorbar(shown, ax=axes_image, label="detector counts", shrink=0.8)
    figure.tight_layout()
    path = out_dir / "stem_fig3.png"
    figure.savefig(path, dpi=130)
    return path


def figure_tables(out_dir: Path) -> Path:
    """Intensity versus thickness for all phases and orientations (both detector modes)."""
    plt = _pyplot()
    from hagg_tf.stem.tables import TableError, load_tables
    try:
        tables = load_tables(_TABLES.value)
    except TableError as error:
        fail(str(error))
    try:
        flat = load_tables(_TABLES.value, column="intensity_flat")
    except TableError:
        flat = None
    groups: dict[str, list[int]] = {}
    for position, table in enumerate(tables.tables):
        groups.setdefault(f"{table.material} {table.phase}", []).append(position)
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    colormap = plt.get_cmap("viridis")
    for axis, (name, members) in zip(axes, groups.items()):
        for rank, position in enumerate(members):
            table = tables.tables[position]
            color = "tab:red" if table.orientation == "random" else colormap(rank / max(len(members) - 1, 1))
            axis.plot(table.thickness_nm, table.intensity, color=color, lw=1.2, label=table.orientation)
            if flat is not None:
                axis.plot(flat.tables[position].thickness_nm, flat.tables[position].intensity,
                          color=color, lw=0.6, ls=":")
        axis.set_title(name)
        axis.set_xlabel("thickness / nm")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("HAADF intensity / incident beam")
    axes[-1].legend(fontsize=6, ncol=2, title="tilt [100]→[010] (deg)", title_fontsize=6)
    settings = tables.provenance.get("settings", {})
    subtitle = ("solid: measured detector sensitivity; dotted: flat 55–250 mrad. "
                f"abTEM frozen phonons, {settings.get('num_configs', '?')} configs × "
                f"{settings.get('num_positions', '?')} probe positions, 300 kV, β = 21.1 mrad")
    figure.suptitle(subtitle, fontsize=9)
    figure.tight_layout()
    path = out_dir / "stem_tables.png"
    figure.savefig(path, dpi=130)
    return path


def figure_coverage(out_dir: Path) -> Path:
    """Histogram of projected half-extents and the image half-width at the pixel size."""
    plt = _pyplot()
    from hagg_tf.stem import coverage
    if _HALF_EXTENTS.value:
        extents = np.load(_HALF_EXTENTS.value)
    else:
        extents, _ = coverage.measure_half_extents(_PER_PARAMETER.value, _SEED.value, _WORKERS.value)
        np.save(out_dir / f"half_extents_seed{_SEED.value}_{_PER_PARAMETER.value}per.npy", extents)
    fraction = coverage.inside_fraction(extents, _PIXEL.value, _IMAGE_SIZE.value)
    smallest = coverage.smallest_pixel_size(extents, 0.99, _IMAGE_SIZE.value)
    half_width = 0.5 * _IMAGE_SIZE.value * _PIXEL.value
    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.hist(extents, bins=80, color="tab:gray")
    axis.axvline(half_width, color="tab:red",
                 label=f"image half-width {half_width:.0f} nm ({_PIXEL.value} nm/px × {_IMAGE_SIZE.value}/2)")
    axis.axvline(np.quantile(extents, 0.99), color="tab:blue", ls="--",
                 label=f"99th percentile {np.quantile(extents, 0.99):.0f} nm")
    axis.set_xlabel("projected half-extent from the centre of mass (radius included) / nm")
    axis.set_ylabel("aggregates")
    axis.set_title(f"{len(extents)} aggregates over Table 2: {100 * fraction:.2f} % inside", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out_dir / "stem_coverage.png"
    figure.savefig(path, dpi=130)
    print(json.dumps({"aggregates": int(len(extents)), "pixel_size_nm": _PIXEL.value,
                      "inside_fraction": fraction, "quantile_99_nm": float(np.quantile(extents, 0.99)),
                      "max_nm": float(extents.max()), "smallest_pixel_size_for_99pct": smallest}))
    return path


def figure_convergence(out_dir: Path) -> Path:
    plt = _pyplot()
    if not _CONVERGENCE.value or len(_CONVERGENCE.value) != 2:
        fail("--convergence needs two per-table JSON files")
    figure, axis = plt.subplots(figsize=(6, 4))
    for path, style in zip(_CONVERGENCE.value, ("-", "--")):
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            fail(f"{path}: cannot read a per-table result ({error})")
        s = result["settings"]
        box = result.get("box_angstrom", [10 * s["lateral_nm"]] * 2)
        label = (f"box {box[0] / 10:.2f}×{box[1] / 10:.2f} nm, {s['num_configs']} configs × "
                 f"{s['num_positions']} positions, defocus {s.get('defocus_angstrom', 0) / 10:g} nm, "
                 f"{result['runtime_s']:.0f} s")
        thickness = np.asarray(result["thickness_nm"])
        intensity = np.asarray(result["intensity"])
        error = np.asarray(result["intensity_sem"])
        axis.plot(thickness, intensity, style, label=label)
        axis.fill_between(thickness, intensity - error, intensity + error, alpha=0.25)
    axis.set_title(f"{result['material']} {result['phase']} {result['orientation']}")
    axis.set_xlabel("thickness / nm")
    axis.set_ylabel("HAADF intensity / incident beam")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = out_dir / "stem_table_convergence.png"
    figure.savefig(path, dpi=130)
    return path


def main(argv):
    reject_extra_arguments(argv)
    out_dir = check_output_dir(_OUTPUT.value)
    out_dir.mkdir(parents=True, exist_ok=True)
    makers = {"fig3": figure_fig3, "tables": figure_tables, "coverage": figure_coverage,
              "convergence": figure_convergence}
    path = makers[_FIGURE.value](out_dir)
    print(f"wrote {path}")
    return 0


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
