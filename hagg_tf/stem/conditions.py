"""Imaging conditions: what varies between microscopes, days and images (issue 10).

Everything between the HAADF tables and the stored counts that a real acquisition sets, each
with the default that reproduces the paper's idealized images (SPEC §6, paper Sec. 2.1.4).
`hagg_tf.stem.render_stem(..., conditions=...)` applies them; where each one enters the image
formation is described in `hagg_tf.stem.render`, and their typical ranges (cited or measured)
in docs/stem.md, "Imaging conditions".

* ``film_thickness_nm`` — amorphous carbon support film under the aggregate; its intensity
  comes from the abTEM carbon table (`hagg_tf.stem.tables.load_film_table`) and adds to the
  whole field, with its shot noise.
* ``gain``, ``dark_offset``, ``read_noise`` — the detector chain:
  counts = clip(round(gain × Poisson(electrons_per_pixel × I) + dark_offset + N(0, read_noise²)),
  0, 65535). `hagg_tf.stem.normalized_intensity` undoes gain and offset.
* ``focal_plane_offset_nm`` — focal plane height above the aggregate's centre of mass; each
  particle's defocus blur σ = |z − z_focal| tan β grows with it.
* ``probe_blur_nm`` — an extra Gaussian probe/source blur (s.d.) of the whole image.
* ``line_jitter_nm``, ``drift_nm`` — scan distortions: a random x-offset per scan line and a
  slow linear drift accumulated over the frame.
* ``dose``, ``pixel_size_nm`` — per image.

Example:
    >>> from hagg_tf.stem.conditions import ImagingConditions, parse_conditions
    >>> conditions = parse_conditions("film_thickness_nm=5,read_noise=3,drift_nm=1.5,-0.5")
    >>> conditions.film_thickness_nm, conditions.drift_nm
    (5.0, (1.5, -0.5))
    >>> ImagingConditions.from_dict(conditions.to_dict()) == conditions
    True
    >>> ImagingConditions().is_default()
    True
"""

from __future__ import annotations

import dataclasses
import json

from hagg_tf.model.parameters import require_finite

#: Default pixel size, nm: with 512 pixels the field of view is 614.4 nm, which holds
#: ≥ 99 % of the aggregates over Table 2 wholly (measured with `coverage.inside_fraction`,
#: see docs/stem.md).
DEFAULT_PIXEL_SIZE_NM = 1.2
DEFAULT_DOSE = 149.0            # electrons per Å², paper Sec. 2.1.4 (ref. [23])


class ConditionsError(ValueError):
    """Invalid imaging conditions: the message names the field and the value."""


# Per scalar field: (lowest allowed value, whether the lowest value itself is allowed).
# None: any finite number. One table, so that validation, parsing and messages agree.
_BOUNDS: dict[str, tuple[float | None, bool]] = {
    "film_thickness_nm": (0.0, True),
    "gain": (0.0, False),
    "dark_offset": (0.0, True),
    "read_noise": (0.0, True),
    "focal_plane_offset_nm": (None, True),
    "probe_blur_nm": (0.0, True),
    "line_jitter_nm": (0.0, True),
    "dose": (0.0, False),
    "pixel_size_nm": (0.0, False),
}
_PAIR_FIELDS = ("drift_nm",)


def _finite_number(name: str, value) -> float:
    return require_finite(f"ImagingConditions.{name}", value, ConditionsError)


@dataclasses.dataclass(frozen=True)
class ImagingConditions:
    """The imaging conditions of one image; the defaults reproduce the paper's images.

    Attributes:
        film_thickness_nm: amorphous carbon support film under the aggregate, nm (0: none).
        gain: detector counts per electron (> 0).
        dark_offset: counts added to every pixel (the detector's black level, ≥ 0).
        read_noise: s.d. of the Gaussian read noise per pixel, counts (≥ 0).
        focal_plane_offset_nm: focal plane height above the aggregate's centre of mass, nm.
        probe_blur_nm: s.d. of an extra Gaussian probe/source blur, nm (≥ 0).
        line_jitter_nm: s.d. of a random x-offset per scan line, nm (≥ 0).
        drift_nm: (x, y) slow specimen drift accumulated over the frame, nm: row r of an
            H-row image sees the specimen displaced by drift × r / (H − 1).
        dose: electron dose, e/Å² (> 0).
        pixel_size_nm: pixel edge, nm (> 0).

    Raises:
        ConditionsError (a ValueError): on construction, for a value that is not a finite
            number within its field's bounds; the message names the field.
    """

    film_thickness_nm: float = 0.0
    gain: float = 1.0
    dark_offset: float = 0.0
    read_noise: float = 0.0
    focal_plane_offset_nm: float = 0.0
    probe_blur_nm: float = 0.0
    line_jitter_nm: float = 0.0
    drift_nm: tuple[float, float] = (0.0, 0.0)
    dose: float = DEFAULT_DOSE
    pixel_size_nm: float = DEFAULT_PIXEL_SIZE_NM

    def __post_init__(self):
        for name, (low, inclusive) in _BOUNDS.items():
            value = _finite_number(name, getattr(self, name))
            if low is not None and (value < low or (value == low and not inclusive)):
                relation = ">=" if inclusive else ">"
                raise ConditionsError(f"ImagingConditions.{name} must be {relation} {low:g}, "
                                      f"got {value!r}")
            object.__setattr__(self, name, value + 0.0)  # + 0.0: -0.0 becomes 0.0
        drift = self.drift_nm
        if isinstance(drift, (str, bytes)) or not hasattr(drift, "__len__") or len(drift) != 2:
            raise ConditionsError(f"ImagingConditions.drift_nm must be two numbers (x, y) in nm, "
                                  f"got {drift!r}")
        object.__setattr__(self, "drift_nm",
                           tuple(_finite_number("drift_nm", value) + 0.0 for value in drift))

    @property
    def scan_displaced(self) -> bool:
        """Whether line jitter or drift move the probe positions."""
        return self.line_jitter_nm > 0 or self.drift_nm != (0.0, 0.0)

    @property
    def detector_default(self) -> bool:
        """Whether film and detector leave the counts at today's Poisson(electrons × I)."""
        return (self.film_thickness_nm == 0 and self.gain == 1 and self.dark_offset == 0
                and self.read_noise == 0)

    def is_default(self) -> bool:
        """Whether every field has its default value (the paper's imaging)."""
        return self == ImagingConditions()

    def replace(self, **changes) -> ImagingConditions:
        """A copy with the given fields changed (validated like a new instance)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ConditionsError(f"unknown imaging condition(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(field_names())})")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-safe dict of all fields (drift as a two-element list)."""
        result = {}
        for name in field_names():
            value = getattr(self, name)
            result[name] = list(value) if name in _PAIR_FIELDS else value
        return result

    @classmethod
    def from_dict(cls, values: dict) -> ImagingConditions:
        """Conditions from a dict as `to_dict` writes it; missing fields keep their defaults.

        Raises:
            ConditionsError: unknown keys or invalid values (named).
        """
        if not isinstance(values, dict):
            raise ConditionsError(f"imaging conditions must be a dict, got {type(values).__name__}")
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise ConditionsError(f"unknown imaging condition(s) {', '.join(map(str, unknown))} "
                                  f"(known: {', '.join(field_names())})")
        values = dict(values)
        if "drift_nm" in values and isinstance(values["drift_nm"], list):
            values["drift_nm"] = tuple(values["drift_nm"])
        return cls(**values)


def field_names() -> tuple[str, ...]:
    """The names of the `ImagingConditions` fields, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(ImagingConditions))


def parse_conditions(text: str, base: ImagingConditions | None = None) -> ImagingConditions:
    """Conditions from command-line text: ``name=value`` pairs or a JSON object.

    Pairs are separated by commas; the two numbers of ``drift_nm`` are separated by a comma
    too (``drift_nm=1.5,-0.5``). A JSON object (text starting with ``{``) is read like
    `ImagingConditions.from_dict`, e.g. the ``conditions`` of an image's metadata.

    Args:
        text: e.g. ``"film_thickness_nm=5,read_noise=3"``; empty text changes nothing.
        base: the conditions the text changes (default: the defaults).

    Returns:
        The conditions.

    Raises:
        ConditionsError: unknown names, repeated names, values that are not numbers or out of
            bounds; the message names the field and the value.
    """
    base = ImagingConditions() if base is None else base
    return base.replace(**parse_condition_changes(text))


def parse_condition_changes(text: str) -> dict:
    """The fields that command-line text sets (see `parse_conditions`), by name.

    Returns:
        {field name: value} (``drift_nm`` as a tuple), names and values checked.

    Raises:
        ConditionsError: as `parse_conditions`.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConditionsError(f"imaging conditions are not valid JSON ({error})") from None
        ImagingConditions.from_dict(values)  # names and values checked
        return {name: tuple(value) if name in _PAIR_FIELDS else value
                for name, value in values.items()}
    pairs: list[list[str]] = []
    for token in (part.strip() for part in text.split(",")):
        if not token:
            continue
        if "=" in token:
            name, value = (part.strip() for part in token.split("=", 1))
            pairs.append([name, value])
        elif pairs:
            pairs[-1][1] += "," + token  # the second number of drift_nm
        else:
            raise ConditionsError(f"imaging conditions: expected name=value, got {token!r}")
    changes: dict = {}
    for name, value in pairs:
        if name not in field_names():
            raise ConditionsError(f"unknown imaging condition {name!r} "
                                  f"(known: {', '.join(field_names())})")
        if name in changes:
            raise ConditionsError(f"imaging condition {name} given twice")
        numbers_text = [part.strip() for part in value.split(",")]
        expected = 2 if name in _PAIR_FIELDS else 1
        if len(numbers_text) != expected:
            what = "two numbers x,y" if expected == 2 else "one number"
            raise ConditionsError(f"imaging condition {name} takes {what}, got {value!r}")
        try:
            parsed = [float(part) for part in numbers_text]
        except ValueError:
            raise ConditionsError(f"imaging condition {name}: {value!r} is not a number") from None
        changes[name] = tuple(parsed) if expected == 2 else parsed[0]
    ImagingConditions().replace(**changes)  # values checked
    return changes
