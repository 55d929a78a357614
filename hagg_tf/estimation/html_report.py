"""``report.html``: one sample's characterization as a self-contained page to look at.

The page shows what ``report.json`` holds, for a person: warnings first, θ̂ with its bootstrap
uncertainty (when the report has one, :mod:`hagg_tf.estimation.uncertainty`), the model card's
typical errors and what each parameter means (the words of
:mod:`hagg_tf.estimation.quantities`), histograms of the digital shadows' descriptors S_TiO2,
Z_hetero and Z_total, the images as the networks saw them with scale bars in nm, the input
files, the networks used and the notes.

It needs nothing but the file: no network access, no scripts, no external style sheets or
fonts. The thumbnails are embedded as ``data:image/png;base64`` (8-bit PNGs written with
Pillow, imageio's PNG backend) and the histograms are inline SVG drawn from numpy histograms, so
no plotting library is loaded; a Content-Security-Policy meta tag tells the browser to load
nothing from anywhere. Every string that comes from the user or the files (file names,
warnings, notes, paths) is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.characterize import (THUMBNAIL_SIDE, CharacterizationResult,
                                             collapse_warnings, format_known_theta, format_stat,
                                             format_theta, format_value, is_placeholder,
                                             scale_bar_length)
from hagg_tf.estimation.quantities import (DESCRIPTOR_QUANTITIES, THETA_QUANTITIES, Quantity,
                                           format_typical_error, typical_error)
from hagg_tf.estimation.shadows import descriptor_arrays
from hagg_tf.jsonsafe import json_safe

#: File name of the page, beside report.json.
HTML_REPORT_NAME = "report.html"

#: Brightness of the thumbnails: 0 counts is black, this percentile of each image white (the
#: same stretch as the contact sheet of characterize.png).
THUMBNAIL_WHITE_PERCENTILE = 99.8

# The page loads nothing: images only from data: URLs, styles only from its own <style>.
_CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                            "base-uri 'none'; form-action 'none'")

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1180px;box-sizing:border-box;padding:16px 20px 40px;color:#1d232a;background:#fff;
line-height:1.4}
h1{font-size:1.55em;margin:0 0 4px}h2{font-size:1.2em;margin:26px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:3px}
.sub{color:#57606a;margin:0}
table{border-collapse:collapse;font-size:0.92em;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.small{font-size:0.85em;color:#57606a}
.warnings{background:#fff4d6;border:1px solid #e3b341;border-left:8px solid #d4a72c;
padding:8px 14px;margin:14px 0}
.warnings h2{border:none;margin:2px 0 4px;color:#7a4b00}
.warnings li{margin:3px 0}
.placeholder{background:#ffe3e3;border-left-color:#cf222e;border-color:#f1a3a3}
.placeholder h2{color:#82071e}
.ok{background:#e8f6ec;border:1px solid #8fd19e;padding:6px 14px;margin:14px 0}
.histograms{display:flex;flex-wrap:wrap;gap:14px}
.histograms figure{margin:0;width:360px}
figcaption{font-size:0.88em}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.thumb{margin:0}
.frame{position:relative;line-height:0}
.frame img{display:block;width:100%;height:auto}
.scalebar{position:absolute;right:5%;bottom:5%;height:4px;background:#fff;
box-shadow:0 0 2px #000}
.scalebar span{position:absolute;bottom:7px;left:-30px;right:-30px;text-align:center;
color:#fff;font-size:12px;line-height:1;text-shadow:0 0 3px #000,0 0 2px #000}
.thumb figcaption{margin-top:3px;line-height:1.25;word-break:break-all}
.bar{fill:#8c959f}.mean{stroke:#cf222e;stroke-width:2}
svg text{font-family:inherit;font-size:11px;fill:#1d232a}
svg .axis{stroke:#57606a;stroke-width:1}
"""


def report_html(result: CharacterizationResult, report: Optional[Mapping] = None) -> str:
    """The page for one sample, as a string.

    Args:
        result: what :func:`~hagg_tf.estimation.characterize.characterize` found.
        report: the report the page shows (``result.report()`` as written to report.json, with
            its ``"files"`` when known); None computes it from ``result``. Its
            ``"uncertainty"`` (bootstrap over the images) is shown when present, θ̂ alone when
            not.

    Returns:
        A complete HTML5 document that loads nothing from outside itself.
    """
    if report is None:
        report = json_safe(result.report())
    card = (report.get("model") or {}).get("model_card") or result.model.get("model_card") or {}
    title = f"hagg_tf characterization: {_sample_name(result)}"
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{_CONTENT_SECURITY_POLICY}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>"]
    parts.append(_header(result, report, title))
    parts.append(_warnings_section(result, report, card))
    parts.append(_theta_section(result, report, card))
    parts.append(_descriptor_section(result, report))
    parts.append(_image_section(result))
    parts.append(_files_section(result, report))
    parts.append(_model_section(report, card))
    parts.append(_notes_section(result, report))
    parts.extend(["</body>", "</html>", ""])
    return "\n".join(part for part in parts if part)


def write_html_report(result: CharacterizationResult, path: Union[str, os.PathLike],
                      report: Optional[Mapping] = None) -> pathlib.Path:
    """Writes :func:`report_html` to ``path`` (atomically, UTF-8).

    Returns:
        ``path``.
    """
    from hagg_tf.model.io import atomic_write

    text = report_html(result, report).encode("utf-8")
    return atomic_write(path, lambda stream: stream.write(text))


# ------------------------------------------------------------------------------------ sections

def _header(result: CharacterizationResult, report: Mapping, title: str) -> str:
    model = report.get("model") or {}
    versions = report.get("versions") or {}
    shadows = report.get("shadows") or {}
    facts = [f"{result.estimate.num_images} HAADF-STEM images",
             f"networks: version {_e(model.get('version', '?'))}",
             f"{shadows.get('count', result.shadow_count)} digital shadows"]
    if versions.get("hagg_tf"):
        facts.append(f"hagg_tf {_e(versions['hagg_tf'])}")
    return (f"<header><h1>{_e(title)}</h1><p class=\"sub\">" + " · ".join(facts)
            + "</p></header>")


def _warnings_section(result: CharacterizationResult, report: Mapping, card: Mapping) -> str:
    warnings = collapse_warnings(report.get("warnings") or result.warnings)
    if not warnings:
        return '<section class="ok" id="warnings"><strong>No warnings.</strong></section>'
    placeholder = " placeholder" if is_placeholder(card) else ""
    items = "".join(f"<li>{_e(warning)}</li>" for warning in warnings)
    return (f'<section class="warnings{placeholder}" id="warnings"><h2>⚠ Warnings '
            f"({len(warnings)})</h2><ul>{items}</ul></section>")


def _theta_section(result: CharacterizationResult, report: Mapping, card: Mapping) -> str:
    estimate = result.estimate
    uncertainty = report.get("uncertainty") or None
    per_parameter = (uncertainty or {}).get("parameters") or {}
    simulated = report.get("simulated_theta")
    raw = {"wo3_cluster_size": estimate.wo3_cluster_size_raw,
           "tio2_cluster_size": estimate.tio2_cluster_size_raw}
    head = ["quantity", "θ̂"]
    if uncertainty:
        head += ["± s.d.", "68 % interval", "95 % interval"]
    head += ["typical error (model card)"]
    if simulated:
        head += ["simulated θ"]
    head += ["what it means"]
    rows = []
    for quantity, value in zip(THETA_QUANTITIES, estimate.theta):
        cells = [f"{_e(quantity.name)}<br><span class=\"small\">"
                 f"{_symbol_html(quantity, hat=True)}</span>",
                 _num(format_value(value)
                      + (f'<br><span class="small">raw {raw[quantity.key]:.2f}</span>'
                         if quantity.key in raw and _finite(raw[quantity.key]) else ""))]
        if uncertainty:
            spread = per_parameter.get(quantity.key) or {}
            cells += [_num(_format_number(spread.get("sd"), quantity)),
                      _num(_format_interval(spread.get("interval_68"), quantity)),
                      _num(_format_interval(spread.get("interval_95"), quantity)
                           + _format_distribution(spread.get("distribution")))]
        cells.append(_e(format_typical_error(typical_error(quantity.key, card))))
        if simulated:
            cells.append(_num(_e(_format_plain(simulated.get(quantity.key)))))
        cells.append(_chemistry(quantity.meaning))
        rows.append(cells)
    lines = [f"<section id=\"theta\"><h2>θ̂: the parameters of the 3D model, estimated from the "
             f"{estimate.num_images} images</h2>", _table(head, rows)]
    if uncertainty:
        lines.append(f"<p class=\"small\">Uncertainty: {_e(uncertainty.get('method', ''))}"
                     f"{_resampling_facts(uncertainty)}; the intervals are percentile intervals "
                     "of the replicates (cluster sizes: of the rounded replicates, with the share "
                     "of replicates per value).</p>")
    else:
        lines.append("<p class=\"small\">No uncertainty of θ̂ in this report (no bootstrap over "
                     "the images was run); the typical errors come from the model card.</p>")
    accuracy = card.get("accuracy") or {}
    if accuracy.get("groups_of_nu"):
        lines.append(f"<p class=\"small\">Typical error: mean absolute error on "
                     f"{_e(accuracy['groups_of_nu'])} simulated test samples of the networks' "
                     "evaluation; cluster sizes: how often θ̂ is exact / within ±1.</p>")
    if result.simulated_theta is not None:
        lines.append("<p class=\"small\">The images' metadata: simulated with θ = "
                     f"{_e(format_known_theta(result.simulated_theta))}.</p>")
    lines.append("</section>")
    return "\n".join(lines)


def _descriptor_section(result: CharacterizationResult, report: Mapping) -> str:
    quantities = report.get("quantities") or {}
    values = descriptor_arrays(result.descriptors)
    figures = []
    for quantity in DESCRIPTOR_QUANTITIES:
        data = values[quantity.key]
        stats = result.summary[quantity.key]
        extra = ""
        if quantity.key == "tio2_cluster_size" and stats["count"] < result.shadow_count:
            extra = f" ({stats['count']} of {result.shadow_count} shadows contain TiO2)"
        figures.append(
            f'<figure>{histogram_svg(data, stats["mean"], quantity.symbol)}<figcaption>'
            f"<strong>{_symbol_html(quantity)} = {format_stat(stats['mean'])} ± "
            f"{format_stat(stats['std'])}</strong> (s.d.), {stats['count']} shadows<br>"
            f"{_chemistry(quantity.name)}: {_chemistry(quantity.meaning + extra)}"
            "</figcaption></figure>")
    spread = ((quantities.get(DESCRIPTOR_QUANTITIES[0].symbol) or {}).get("spread")
              or "s.d. over the digital shadows")
    drawn = format_theta(result.shadow_parameters.as_tuple())
    resamples = (report.get("uncertainty") or {}).get("resamples")
    if (report.get("shadows") or {}).get("theta_from") == "bootstrap" and resamples:
        # The shadows' θ follows θ̂'s bootstrap replicates, so their spread includes its
        # uncertainty (hagg_tf.estimation.characterize, SHADOW_THETA_SOURCES).
        source = (f"shadow k drawn from bootstrap replicate k mod {_e(resamples)} of θ̂ (made "
                  f"admissible; θ̂ itself gives θ = {_e(drawn)}), so their spread includes "
                  "θ̂'s uncertainty")
    else:
        source = f"drawn from θ = {_e(drawn)}"
    lines = ["<section id=\"descriptors\"><h2>Digital shadows: structural descriptors</h2>",
             f"<p>{result.shadow_count} new aggregates, {source} "
             f"(seed {result.seed}), each described by its S<sub>TiO<sub>2</sub></sub>, "
             "Z<sub>hetero</sub> and Z<sub>total</sub> (red line: the mean). ± is the "
             f"{_e(spread)}.</p>"]
    if result.sample_size is not None:
        lines.append(f"<p class=\"small\">Particles of the shadows: "
                     f"{_e(result.sample_size.describe())}</p>")
    lines += [f"<div class=\"histograms\">{''.join(figures)}</div>", "</section>"]
    return "\n".join(lines)


def _image_section(result: CharacterizationResult) -> str:
    counts = result.prepared.counts
    estimate = result.estimate
    tiles = []
    for number, (png, length, fraction) in enumerate(thumbnails(result)):
        path = str(result.images[number].get("path", f"image {number}"))
        name = pathlib.PurePath(path).name or path
        fractal_dimension = estimate.fractal_dimension_per_image[number]
        caption = (f'<span title="{_e(path)}">{_e(name)}</span><br>'
                   f"D̂<sub>f</sub> {_format_float(fractal_dimension, 2)}"
                   f" · ρ̂ {_format_float(estimate.mixing_ratio_per_image[number], 2)}")
        tiles.append(
            f'<figure class="thumb"><div class="frame"><img src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}" alt="{_e(name)}">'
            f'<div class="scalebar" style="width:{100 * fraction:.2f}%">'
            f"<span>{length:g} nm</span></div></div><figcaption>{caption}</figcaption></figure>")
    pixel = _network_pixel_size(result, 0) if len(counts) else None
    size = f"{counts.shape[1]}×{counts.shape[2]} px" if counts.ndim == 3 else ""
    at = f" at {pixel:g} nm per pixel" if pixel else ""
    return (f"<section id=\"images\"><h2>The {len(counts)} images as the networks saw them</h2>"
            f"<p class=\"small\">{size}{at} (resampled, padded or cropped as listed below); "
            f"black = 0 counts, white = the {THUMBNAIL_WHITE_PERCENTILE:g}th percentile of each "
            "image; per image D̂<sub>f</sub> (CNN<sup>Df</sup>) and ρ̂.</p>"
            f"<div class=\"sheet\">{''.join(tiles)}</div></section>")


def _files_section(result: CharacterizationResult, report: Mapping) -> str:
    estimate = result.estimate
    images = report.get("images") or result.images
    head = ["#", "file", "size / px", "pixels", "pixel size / nm", "electrons per pixel",
            "prepared", "D̂<sub>f</sub>", "ρ̂<sub>reg</sub>", "p(homogeneous)", "ρ̂"]
    rows = []
    for number, info in enumerate(images):
        sources = info.get("sources") or {}
        shape = info.get("shape") or []
        rows.append([
            _num(str(number)), _e(info.get("path", "")),
            _num("×".join(str(side) for side in shape)), _e(info.get("dtype", "")),
            _num(_e(_format_plain(info.get("pixel_size_nm")))
                 + _source(sources.get("pixel_size_nm"))),
            _num(_e(_format_plain(info.get("electrons_per_pixel")))
                 + _source(sources.get("electrons_per_pixel"))),
            _e("; ".join(str(change) for change in info.get("prepared") or [])),
            _num(_format_float(_item(estimate.fractal_dimension_per_image, number), 3)),
            _num(_format_float(_item(estimate.mixing_ratio_regressor_per_image, number), 3)),
            _num(_format_float(_item(estimate.homogeneous_probability_per_image, number), 2)),
            _num(_format_float(_item(estimate.mixing_ratio_per_image, number), 3))])
    return (f"<section id=\"files\"><h2>Input files ({len(images)})</h2>"
            f"{_table(head, rows, escape_head=False)}</section>")


def _model_section(report: Mapping, card: Mapping) -> str:
    model = report.get("model") or {}
    rows = [["version", _e(model.get("version", "?"))], ["path", _e(model.get("path", ""))],
            ["status", _e(card.get("status", "not stated"))]]
    for key, label in (("summary", "training"), ("accuracy_summary", "measured accuracy")):
        if card.get(key):
            rows.append([label, _e(card[key])])
    rows.append(["input", _e(f"{model.get('num_images', '?')} images (ν) of "
                             f"{model.get('image_size', '?')}×{model.get('image_size', '?')} px "
                             f"at {_format_plain(model.get('pixel_size_nm'))} nm per pixel")])
    if model.get("kernel_dtype"):
        rows.append(["stored weights", _e(model["kernel_dtype"])])
    return (f"<section id=\"model\"><h2>Networks</h2>"
            f"{_table(['', ''], rows, header=False)}</section>")


def _notes_section(result: CharacterizationResult, report: Mapping) -> str:
    notes = collapse_warnings(report.get("notes") or result.notes)
    items = "".join(f"<li>{_e(note)}</li>" for note in notes) or "<li>none</li>"
    files = dict(report.get("files") or {})
    files.setdefault("report", "report.json")
    links = ", ".join(f'<a href="{_e(name)}">{_e(name)}</a>' for name in files.values())
    versions = ", ".join(f"{_e(name)} {_e(version)}"
                         for name, version in (report.get("versions") or {}).items())
    timings = ", ".join(f"{_e(name).replace('_', ' ')} {value:.2f}"
                        for name, value in (report.get("timings_s") or {}).items()
                        if isinstance(value, (int, float)))
    lines = [f"<section id=\"notes\"><h2>Notes</h2><ul>{items}</ul>",
             f"<p class=\"small\">Files beside this page: {links}.</p>"]
    if versions:
        lines.append(f"<p class=\"small\">Software: {versions}.</p>")
    if timings:
        lines.append(f"<p class=\"small\">Time per stage / s: {timings}.</p>")
    lines.append("</section>")
    return "\n".join(lines)


# ------------------------------------------------------------------------- thumbnails and SVG

def thumbnails(result: CharacterizationResult) -> list[tuple[bytes, float, float]]:
    """The prepared images as small 8-bit PNGs, with their scale bars.

    Each image is reduced by block means to at most
    :data:`~hagg_tf.estimation.characterize.THUMBNAIL_SIDE` pixels a side (a 512-px image by
    2 × 2 blocks; rows and columns that do not fill a block are left out), and stretched from
    0 counts (black) to its :data:`THUMBNAIL_WHITE_PERCENTILE` th percentile (white).

    Returns:
        Per image: (PNG bytes, scale bar length in nm, scale bar length as a fraction of the
        thumbnail's width).
    """
    from PIL import Image  # Pillow: imageio's PNG backend, already loaded to read the images

    output = []
    for number, image in enumerate(np.asarray(result.prepared.counts, np.float32)):
        step = max(1, math.ceil(max(image.shape) / THUMBNAIL_SIDE))
        rows, columns = image.shape[0] // step, image.shape[1] // step
        # Block means as a sum of step² strided views: ~10× faster than a 4-D mean(axis=(1, 3)).
        reduced = np.zeros((rows, columns), np.float32)
        for row in range(step):
            for column in range(step):
                reduced += image[row:rows * step:step, column:columns * step:step]
        reduced /= step * step
        white = (float(np.percentile(reduced, THUMBNAIL_WHITE_PERCENTILE))
                 or float(reduced.max()) or 1.0)
        grey = np.clip(reduced * (255.0 / white) + 0.5, 0, 255).astype(np.uint8)
        stream = io.BytesIO()
        Image.fromarray(grey, mode="L").save(stream, format="PNG", compress_level=6)
        field_nm = columns * step * _network_pixel_size(result, number)
        length = scale_bar_length(field_nm)
        output.append((stream.getvalue(), length, length / field_nm))
    return output


def histogram_bins(count: int) -> int:
    """Bins of a histogram of ``count`` values: a quarter of the count, 5 to 30."""
    return min(30, max(5, count // 4))


def histogram_svg(values: np.ndarray, mean: Optional[float], label: str, *,
                  width: int = 360, height: int = 210) -> str:
    """An inline-SVG histogram of ``values`` (NaN left out) with the mean marked.

    Args:
        values: (M,) one descriptor over the shadows.
        mean: marked with a red line (None: not marked).
        label: the x axis label (plain text).
        width, height: size in CSS pixels.

    Returns:
        ``<svg …>…</svg>``; each bar is a ``<rect class="bar" data-count="k" …>``.
    """
    data = np.asarray(values, np.float64)
    data = data[np.isfinite(data)]
    left, right, top, bottom = 44, width - 12, 22, height - 38
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="histogram of {_e(label)} over the shadows">']
    if not data.size:
        parts.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">'
                     f"no shadow has a {_e(label)}</text></svg>")
        return "".join(parts)
    low, high = float(data.min()), float(data.max())
    if high - low < 1e-9 * max(1.0, abs(low)):  # one value: a unit-wide bin around it
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(data, bins=histogram_bins(data.size), range=(low, high))
    y_ticks = _nice_ticks(0.0, float(counts.max()), 4, integer=True)
    y_top = max(y_ticks[-1], float(counts.max()))

    def x_of(value):
        return left + (value - low) / (high - low) * (right - left)

    def y_of(count):
        return bottom - count / y_top * (bottom - top)

    for count, start, stop in zip(counts, edges[:-1], edges[1:]):
        parts.append(f'<rect class="bar" data-count="{int(count)}" x="{x_of(start):.1f}" '
                     f'y="{y_of(count):.1f}" width="{max(x_of(stop) - x_of(start) - 1, 0.5):.1f}" '
                     f'height="{bottom - y_of(count):.1f}"/>')
    parts.append(f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
                 f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>')
    for tick in _nice_ticks(low, high, 5):
        x = x_of(tick)
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" '
                     f'y2="{bottom + 4}"/><text x="{x:.1f}" y="{bottom + 15}" '
                     f'text-anchor="middle">{_tick_label(tick, high - low)}</text>')
    for tick in y_ticks:
        y = y_of(tick)
        parts.append(f'<line class="axis" x1="{left - 4}" y1="{y:.1f}" x2="{left}" '
                     f'y2="{y:.1f}"/><text x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" text-anchor="middle">'
                 f"{_e(label)}</text><text transform=\"translate(12 {(top + bottom) / 2:.0f}) "
                 f'rotate(-90)" text-anchor="middle">shadows</text>')
    if mean is not None and _finite(mean) and low <= mean <= high:
        x = x_of(float(mean))
        parts.append(f'<line class="mean" x1="{x:.1f}" y1="{top - 5}" x2="{x:.1f}" '
                     f'y2="{bottom}"/><text x="{x:.1f}" y="{top - 8}" text-anchor="middle" '
                     f'fill="#cf222e">mean {format_stat(float(mean))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_ticks(low: float, high: float, count: int, integer: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^k) covering [low, high] with about ``count``
    steps; ``integer`` keeps the step at least 1."""
    span = high - low
    if span <= 0:
        return [low] if not integer else [0.0, 1.0]
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = min(factor * power for factor in (1.0, 2.0, 5.0, 10.0) if factor * power >= raw)
    if integer:
        step = max(step, 1.0)
        ticks = np.arange(0.0, math.ceil(high / step) * step + step / 2, step)
    else:
        ticks = np.arange(math.ceil(low / step - 1e-9) * step, high + step * 1e-9, step)
    return [float(round(tick / step) * step) for tick in ticks]


def _tick_label(value: float, span: float) -> str:
    decimals = max(0, 2 - math.floor(math.log10(span))) if span > 0 else 2
    return f"{value:.{min(decimals, 4)}f}".rstrip("0").rstrip(".") or "0"


# ------------------------------------------------------------------------------------ helpers

def _e(value: Any) -> str:
    """HTML-escaped text of anything (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _chemistry(text: str) -> str:
    """Escaped text with WO3 and TiO2 subscripted."""
    return _e(text).replace("WO3", "WO<sub>3</sub>").replace("TiO2", "TiO<sub>2</sub>")


def _symbol_html(quantity: Quantity, hat: bool = False) -> str:
    """``θ_Df`` → θ<sub>Df</sub> (θ̂ with ``hat``); ``S_TiO2`` → S<sub>TiO<sub>2</sub></sub>
    (HTML)."""
    base, _, subscript = quantity.symbol.partition("_")
    if hat:
        base += "\u0302"
    return _e(base) + (f"<sub>{_chemistry(subscript)}</sub>" if subscript else "")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], header: bool = True,
           escape_head: bool = True) -> str:
    """A table of cells that are already HTML (head cells are escaped unless told)."""
    lines = ["<table>"]
    if header:
        lines.append("<tr>" + "".join(f"<th>{_e(cell) if escape_head else cell}</th>"
                                      for cell in head) + "</tr>")
    for row in rows:
        lines.append("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>"
                                      for cell in row) + "</tr>")
    lines.append("</table>")
    return "".join(lines)


def _num(content: str) -> str:
    return f'<td class="num">{content}</td>'


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _format_float(value, decimals: int) -> str:
    return f"{float(value):.{decimals}f}" if _finite(value) else "n/a"


def _format_plain(value) -> str:
    """A number as given (``1.2``, ``21456``), or n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):g}" if _finite(value) else str(value)


def _format_number(value, quantity: Quantity) -> str:
    """An uncertainty figure: two decimals for cluster sizes, three otherwise."""
    if not _finite(value):
        return "n/a"
    decimals = 2 if quantity.key.endswith("cluster_size") else 3
    return f"{float(value):.{decimals}f}"


def _format_interval(interval, quantity: Quantity) -> str:
    """``[1.801, 1.832]``; cluster sizes as integers when they are."""
    if not interval or len(interval) != 2 or not all(_finite(end) for end in interval):
        return "n/a"
    if quantity.key.endswith("cluster_size") and all(float(end).is_integer() for end in interval):
        return f"[{int(interval[0])}, {int(interval[1])}]"
    return f"[{float(interval[0]):.3f}, {float(interval[1]):.3f}]"


def _format_distribution(distribution: Optional[Mapping]) -> str:
    """The share of bootstrap replicates per cluster size: ``3: 31 %, 4: 69 %``."""
    if not distribution:
        return ""
    try:
        items = sorted(distribution.items(), key=lambda item: float(item[0]))
    except (TypeError, ValueError):
        items = list(distribution.items())
    shares = ", ".join(f"{_e(value)}: {100 * float(share):.0f} %" for value, share in items
                       if _finite(share))
    return f'<br><span class="small">{shares}</span>' if shares else ""


def _resampling_facts(uncertainty: Mapping) -> str:
    """``, 200 resamples of the 12 images, seed 0`` (what the record says of it)."""
    facts = [f"{_e(uncertainty[key])}{unit}" if key != "seed" else f"seed {_e(uncertainty[key])}"
             for key, unit in (("resamples", " resamples"), ("num_images", " images"),
                               ("seed", "")) if uncertainty.get(key) is not None]
    return "".join(", " + fact for fact in facts)


def _source(source: Optional[str]) -> str:
    return f'<br><span class="small">{_e(source)}</span>' if source else ""


def _item(values, number: int):
    return values[number] if number < len(values) else float("nan")


def _network_pixel_size(result: CharacterizationResult, number: int) -> float:
    """Pixel size of the prepared images, nm: the networks', else the image's own."""
    return float(result.model["metadata"].get("pixel_size_nm")
                 or result.images[number]["pixel_size_nm"])


def _sample_name(result: CharacterizationResult) -> str:
    """The folder that holds the images (the sample), else the number of images."""
    folders = {str(pathlib.PurePath(str(info.get("path", ""))).parent) for info in result.images}
    if len(folders) == 1:
        name = pathlib.PurePath(folders.pop()).name
        if name:
            return name
    return f"{len(result.images)} images"
