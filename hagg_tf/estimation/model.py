"""Loading the composite characterize SavedModel and running it on images of one sample."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Optional, Union

import numpy as np

from hagg_tf.estimation.estimators import ThetaEstimate

#: Environment variable that overrides the default model location.
MODELS_ENVIRONMENT_VARIABLE = "HAGG_TF_MODELS"
#: Folder of the shipped networks: top-level in the repository, inside ``hagg_tf`` once installed.
SHIPPED_MODELS_DIRNAME = "saved_models"
#: Directory name of the composite model under the export base (TF Serving's model name).
CHARACTERIZE_MODEL_NAME = "characterize"
#: Metadata file of every hagg_tf export; the same name as
#: ``hagg_tf.export.METADATA_FILENAME`` (repeated here so that reading it needs no TensorFlow).
METADATA_FILENAME = "hagg_tf_export.json"
#: Format tag of the composite's metadata file.
METADATA_FORMAT = "hagg_tf characterize export"


def resolve_version_dir(path: Union[str, os.PathLike]) -> pathlib.Path:
    """The version directory of a composite export, given it or a directory above it.

    ``path`` may be the version directory itself (holding ``saved_model.pb``), the model
    directory ``.../characterize`` (the highest numeric version is taken, as TF Serving does) or
    the export base holding ``characterize/``.

    Raises:
        FileNotFoundError: no export found there (the message says what was looked for).
    """
    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    for model_dir in (path, path / CHARACTERIZE_MODEL_NAME):
        if model_dir.is_dir():
            versions = sorted(int(child.name) for child in model_dir.iterdir()
                              if child.name.isdigit() and (child / "saved_model.pb").is_file())
            if versions:
                return model_dir / str(versions[-1])
    raise FileNotFoundError(f"no characterize SavedModel at {path} (looked for saved_model.pb "
                            f"in it, in {path}/<version>/ and in "
                            f"{path}/{CHARACTERIZE_MODEL_NAME}/<version>/)")


def read_metadata(version_dir: Union[str, os.PathLike]) -> dict:
    """The ``hagg_tf_export.json`` of a composite export.

    Raises:
        FileNotFoundError, ValueError: missing, unreadable or not a characterize export.
    """
    path = pathlib.Path(version_dir) / METADATA_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: not a hagg_tf characterize export")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable export metadata ({error})") from None
    if metadata.get("format") != METADATA_FORMAT:
        raise ValueError(f"{path} is not a characterize export (format "
                         f"{metadata.get('format')!r})")
    return metadata


def shipped_models_dir() -> pathlib.Path:
    """The networks shipped with hagg_tf: the repository's top-level ``saved_models/``.

    An installed wheel carries that folder as ``hagg_tf/saved_models`` (package
    ``hagg_tf.saved_models`` in setup.cfg); a source checkout or an editable install keeps it
    next to the ``hagg_tf`` package. The installed copy wins where both exist; where neither
    does, the installed location is returned (and named by the error of :func:`find_model`).
    """
    package = pathlib.Path(__file__).resolve().parents[1]
    installed = package / SHIPPED_MODELS_DIRNAME
    checkout = package.parent / SHIPPED_MODELS_DIRNAME
    return checkout if checkout.is_dir() and not installed.is_dir() else installed


def default_model_dir() -> pathlib.Path:
    """Where ``hagg-characterize`` finds its models when ``--models`` is not given.

    ``$HAGG_TF_MODELS`` if set, else :func:`shipped_models_dir`.
    """
    override = os.environ.get(MODELS_ENVIRONMENT_VARIABLE)
    return pathlib.Path(override) if override else shipped_models_dir()


def find_model(path: Optional[Union[str, os.PathLike]] = None) -> tuple[pathlib.Path, dict]:
    """The version directory and metadata of a composite export, without loading TensorFlow.

    Args:
        path: export base, model directory or version directory; None: :func:`default_model_dir`.

    Raises:
        FileNotFoundError: no export there; the message says where it looked and how to point
            hagg_tf at models (``--models``, ``$HAGG_TF_MODELS``).
        ValueError: the export's metadata is unreadable or of another kind.
    """
    try:
        version_dir = resolve_version_dir(default_model_dir() if path is None else path)
    except FileNotFoundError as error:
        if path is not None:
            origin = ""
        elif os.environ.get(MODELS_ENVIRONMENT_VARIABLE):
            origin = f"; ${MODELS_ENVIRONMENT_VARIABLE} points there"
        else:
            origin = "; the networks shipped with hagg_tf are missing from this installation"
        raise FileNotFoundError(
            f"{error}{origin}; point --models (hagg-evaluate: --model) or "
            f"${MODELS_ENVIRONMENT_VARIABLE} at an export of hagg-export-models "
            f"(docs/learning.md)") from None
    return version_dir, read_metadata(version_dir)


class CharacterizeModel:
    """The composite SavedModel (see :mod:`hagg_tf.export.characterize`), loaded for inference.

    Args:
        path: export base (holding ``characterize/``), model directory or version directory;
            None loads the default (:func:`default_model_dir`).

    Attributes:
        version_dir: the loaded version directory.
        metadata: its ``hagg_tf_export.json``.
    """

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None):
        from hagg_tf.tensorflow_import import import_tensorflow_quietly

        self.version_dir, self.metadata = find_model(path)
        tf = import_tensorflow_quietly()
        self._tf = tf
        self._loaded = tf.saved_model.load(str(self.version_dir))
        self._serve = self._loaded.signatures["serving_default"]

    @property
    def saved_model(self):
        """The object ``tf.saved_model.load`` returned (signatures, variables)."""
        return self._loaded

    @property
    def image_size(self) -> int:
        """Side of the square network input, pixels."""
        return int(self.metadata["image_size"])

    @property
    def num_images(self) -> int:
        """ν, the images per stack of CNN^0 and CNN^1 (the least images per sample)."""
        return int(self.metadata["num_images"])

    @property
    def pixel_size_nm(self) -> Optional[float]:
        """Pixel size of the training images, nm (None if the export does not say)."""
        value = self.metadata.get("pixel_size_nm")
        return None if value is None else float(value)

    @property
    def model_card(self) -> dict:
        """What the networks were trained on and how well they do (may be empty)."""
        return dict(self.metadata.get("model_card") or {})

    def outputs(self, counts: np.ndarray, electrons_per_pixel: np.ndarray) -> dict:
        """All outputs of ``serving_default`` as numpy arrays.

        Args:
            counts: (b, n, H, W) or (n, H, W) detector counts, float32 or convertible.
            electrons_per_pixel: (b, n) or (n,) incident electrons per pixel.
        """
        counts = np.asarray(counts, dtype=np.float32)
        electrons = np.asarray(electrons_per_pixel, dtype=np.float32)
        if counts.ndim == 3:
            counts, electrons = counts[np.newaxis], electrons.reshape(1, -1)
        result = self._serve(images=self._tf.constant(counts),
                             electrons_per_pixel=self._tf.constant(electrons))
        return {key: value.numpy() for key, value in result.items()}

    def estimate(self, counts: np.ndarray, electrons_per_pixel: np.ndarray) -> ThetaEstimate:
        """θ̂ of one sample from its (n, H, W) images (n ≥ ν), see :class:`ThetaEstimate`."""
        counts = np.asarray(counts)
        if counts.ndim != 3:
            raise ValueError(f"expected (n, H, W) images of one sample, got shape {counts.shape}")
        if counts.shape[0] < self.num_images:
            raise ValueError(f"{counts.shape[0]} images, but the multi-image networks need at "
                             f"least nu = {self.num_images}")
        if counts.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}×{self.image_size} pixels, got "
                             f"{counts.shape[1]}×{counts.shape[2]} (see prepare_images)")
        return ThetaEstimate.from_outputs(self.outputs(counts, electrons_per_pixel))
