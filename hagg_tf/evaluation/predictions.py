"""Per-image predictions on a database split: the one input of the paper evaluation.

A :class:`Predictions` file (``.npz``) holds, for the ``N`` images of one split (the paper's E),
the truth read from the database, every network's raw output per image, the multi-image
networks' raw outputs on groups of ``ν`` images of one θ, and optionally the classical
baselines. :mod:`hagg_tf.evaluation.paper_evaluation` turns it into the paper's figures and
tables; computing it needs TensorFlow (:func:`hagg_tf.evaluation.predict.predict_split`), reading
it does not.

Arrays (``N`` images, ``G_ν`` groups of size ``ν``):

========================================  ==========  ================================================
key                                       shape       meaning
========================================  ==========  ================================================
``record_index``                          (N,) int64  sample index i in the database
``theta_id``                              (N,) int64  configuration id; images with equal id share θ
``theta``                                 (N, 4)      (θ_Df, θ_ρ, θ_0, θ_1) the image was drawn with
``fractal_dimension``                     (N,)        D_f(A) of the imaged aggregate (Eq. 5)
``mixing_ratio``                          (N,)        ρ(A) (Eq. 3)
``homogeneous``                           (N,) bool   ρ(A) ∈ {0, 1}
``num_particles``                         (N,) int64  particles in the aggregate (Fig. 15's x axis)
``fractal_dimension_pred``                (N,)        CNN^Df(I)
``mixing_ratio_regressor_pred``           (N,)        CNN^ρ_reg(I)
``homogeneous_probability_pred``          (N,)        CNN^ρ_class(I)
``groups_nu<ν>``                          (G_ν, ν)    row indices (into the N images) of one group;
                                                      all from one θ
``wo3_cluster_size_pred_nu<ν>``           (G_ν,)      CNN^0 on the group, before rounding
``tio2_cluster_size_pred_nu<ν>``          (G_ν,)      CNN^1 on the group, before rounding
``baseline_mixing_ratio_threshold``       (N,)        optional: threshold baseline ρ̂ (Sec. 4)
``baseline_fractal_dimension_box``        (N,)        optional: box-counting D̂_f (Sec. 4)
``sample_heads/<target>/<layer>/…``       —           optional: the model's sample heads of θ̂_Df
                                                      and θ̂_ρ (:mod:`hagg_tf.data.sample_heads`)
========================================  ==========  ================================================

Scalars and strings go into ``info`` (a JSON string): split, dataset path, model description.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Optional, Union

import numpy as np

from hagg_tf.data.sample_heads import SampleHeads, SampleHeadsError
from hagg_tf.model.io import atomic_write

#: Per-image arrays every predictions file has.
PER_IMAGE_KEYS = ("record_index", "theta_id", "theta", "fractal_dimension", "mixing_ratio",
                  "homogeneous", "num_particles", "fractal_dimension_pred",
                  "mixing_ratio_regressor_pred", "homogeneous_probability_pred")
#: Optional per-image arrays of the classical baselines (Sec. 4).
BASELINE_KEYS = ("baseline_mixing_ratio_threshold", "baseline_fractal_dimension_box")
_GROUP_KEY = re.compile(r"^groups_nu(\d+)$")
#: Prefix of the arrays of the model's sample heads in a predictions file.
SAMPLE_HEADS_PREFIX = "sample_heads/"


class PredictionsError(ValueError):
    """A predictions file that is missing arrays or has inconsistent shapes."""


@dataclasses.dataclass
class Predictions:
    """Arrays of a predictions file (see the module docstring) plus its ``info`` dict."""

    arrays: dict
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @property
    def num_images(self) -> int:
        return int(len(self.arrays["record_index"]))

    @property
    def group_sizes(self) -> list[int]:
        """The ν values with multi-image outputs, ascending."""
        return sorted(int(m.group(1)) for key in self.arrays
                      if (m := _GROUP_KEY.match(key)))

    @property
    def sample_heads(self) -> Optional[SampleHeads]:
        """The model's sample heads of θ̂_Df and θ̂_ρ, None if the file has none (the model had
        none, or the file was written before them: θ̂_Df and θ̂_ρ are then the means)."""
        return SampleHeads.from_arrays(self.arrays, SAMPLE_HEADS_PREFIX)

    def groups(self, nu: int) -> np.ndarray:
        """(G, ν) image rows of the groups of size ``nu``."""
        return self.arrays[f"groups_nu{nu}"]

    def validate(self) -> None:
        """Raises :class:`PredictionsError` if an array is missing or mis-shaped."""
        missing = [key for key in PER_IMAGE_KEYS if key not in self.arrays]
        if missing:
            raise PredictionsError(f"predictions lack {', '.join(missing)}")
        count = len(self.arrays["record_index"])
        for key in PER_IMAGE_KEYS + BASELINE_KEYS:
            if key in self.arrays and len(self.arrays[key]) != count:
                raise PredictionsError(f"{key} has {len(self.arrays[key])} rows, expected {count}")
        if np.shape(self.arrays["theta"]) != (count, 4):
            raise PredictionsError(f"theta must be ({count}, 4), got "
                                   f"{np.shape(self.arrays['theta'])}")
        for nu in self.group_sizes:
            groups = np.asarray(self.arrays[f"groups_nu{nu}"])
            if groups.ndim != 2 or groups.shape[1] != nu:
                raise PredictionsError(f"groups_nu{nu} must be (G, {nu}), got {groups.shape}")
            if groups.size and (groups.min() < 0 or groups.max() >= count):
                raise PredictionsError(f"groups_nu{nu} indexes outside the {count} images")
            ids = np.asarray(self.arrays["theta_id"])[groups]
            if groups.size and not np.all(ids == ids[:, :1]):
                raise PredictionsError(f"a group of groups_nu{nu} mixes configurations")
            for network in ("wo3_cluster_size", "tio2_cluster_size"):
                key = f"{network}_pred_nu{nu}"
                if key in self.arrays and len(self.arrays[key]) != len(groups):
                    raise PredictionsError(f"{key} has {len(self.arrays[key])} rows, expected "
                                           f"{len(groups)}")
        try:
            self.sample_heads
        except SampleHeadsError as error:
            raise PredictionsError(str(error)) from None


def save_predictions(predictions: Predictions, path: Union[str, os.PathLike]) -> pathlib.Path:
    """Writes ``predictions`` to ``path`` (``.npz``) atomically."""
    path = pathlib.Path(path)
    predictions.validate()

    def write(stream):
        np.savez_compressed(stream, info=np.asarray(json.dumps(predictions.info)),
                            **{key: np.asarray(value) for key, value in
                               predictions.arrays.items()})

    atomic_write(path, write)
    return path


def load_predictions(path: Union[str, os.PathLike]) -> Predictions:
    """Reads a file written by :func:`save_predictions`.

    Raises:
        FileNotFoundError: no such file.
        PredictionsError: not a predictions file, or inconsistent arrays.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if key != "info"}
            info = json.loads(str(data["info"])) if "info" in data.files else {}
    except (ValueError, OSError) as error:
        raise PredictionsError(f"{path}: not a predictions file ({error})") from None
    return Predictions(arrays, info)
