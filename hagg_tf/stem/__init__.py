"""Physics-based HAADF-STEM images of virtual aggregates (paper Sec. 2.1.3–2.1.4, SPEC §6).

* `render_stem` — the image of one aggregate: projected thickness → table intensity →
  defocus blur → sum → scan noise → shot noise; 16-bit counts plus metadata.
* `ImagingConditions` — support film, detector (gain, offset, read noise, 16-bit
  saturation), focus, probe blur, scan jitter and drift, dose and pixel size of one image
  (``render_stem(..., conditions=...)``; `parse_conditions` reads them from text);
  `normalized_intensity` undoes the detector's gain and offset.
* `load_tables` — the HAADF reference tables (shipped abTEM tables or your own, e.g. STEMSIM,
  in the documented plain format of `hagg_tf.stem.tables`).
* `write_stem_png` / `read_stem_png` — 16-bit PNG with JSON metadata in a text chunk.

Example:
    >>> from hagg_tf import ModelParameters
    >>> from hagg_tf.model.generator import sample_aggregate
    >>> from hagg_tf.stem import render_stem, write_stem_png
    >>> aggregate = sample_aggregate(ModelParameters(1.8, 0.5, 3, 2), seed=1, index=0)
    >>> image = render_stem(aggregate, seed=1, index=0)
    >>> image.counts.shape, image.counts.dtype
    ((512, 512), dtype('uint16'))
    >>> write_stem_png("work/example.png", image)  # doctest: +SKIP

The reference-table machinery that needs abTEM/ASE (`hagg_tf.stem.crystals`,
`hagg_tf.stem.multislice`) is not imported here: it is the optional ``physics`` extra.
"""

from hagg_tf.stem.conditions import ConditionsError, ImagingConditions, parse_conditions
from hagg_tf.stem.io import (intensity_from_counts, normalized_intensity, read_stem_png,
                             write_stem_png)
from hagg_tf.stem.render import (DEFAULT_DOSE, DEFAULT_IMAGE_SIZE, DEFAULT_PIXEL_SIZE_NM,
                                 DEFAULT_SCAN_NOISE_NM, DEFAULT_SEMIANGLE_MRAD, StemImage,
                                 electrons_per_pixel, image_rng, render_stem)
from hagg_tf.stem.tables import HaadfTable, HaadfTables, TableError, load_tables

__all__ = [
    "ConditionsError", "DEFAULT_DOSE", "DEFAULT_IMAGE_SIZE", "DEFAULT_PIXEL_SIZE_NM",
    "DEFAULT_SCAN_NOISE_NM", "DEFAULT_SEMIANGLE_MRAD", "HaadfTable", "HaadfTables",
    "ImagingConditions", "StemImage", "TableError", "electrons_per_pixel", "image_rng",
    "intensity_from_counts", "load_tables", "normalized_intensity", "parse_conditions",
    "read_stem_png", "render_stem", "write_stem_png",
]
