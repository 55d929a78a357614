"""The one way hagg_tf turns numbers into valid JSON: NaN and ±inf become ``null``.

``json.dumps`` writes NaN and infinities as the bare tokens ``NaN``/``Infinity``, which are not
JSON (most readers other than Python's reject them), and it refuses numpy scalars and arrays.
Every report and record hagg_tf writes (report.json, metrics.json, robustness.json, the fitted
baselines, training.json) goes through :func:`json_safe` or :func:`json_default` instead;
:func:`hagg_tf.model.io.write_json_atomic` writes the result. Like
:mod:`hagg_tf.tensorflow_import`, this module sits below every stage and imports nothing of
hagg_tf (numpy only), so any stage and any tool's start-up may use it.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import numpy as np


def finite_or_none(value) -> Optional[float]:
    """One number as JSON can hold it: ``float(value)``, or None for NaN, ±inf or None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: NaN/±inf → None, numpy scalars and arrays → Python
    numbers and lists, tuples → lists, paths → strings, dict keys → strings; recursively.

    Anything else (str, None, other objects) is returned as it is.
    """
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return [json_safe(item) for item in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def json_default(value: Any) -> Any:
    """``default=`` for ``json.dumps``: numpy scalars and arrays (NaN/±inf → None) and paths.

    ``json.dumps`` calls it only for objects it cannot write itself, so a Python float NaN
    elsewhere in the value still needs :func:`json_safe` (or ``allow_nan=False`` to refuse it).

    Raises:
        TypeError: anything else, naming its type.
    """
    if isinstance(value, (np.generic, np.ndarray, os.PathLike)):
        return json_safe(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
