"""Loading the composite characterize SavedModel and running it on images of one sample."""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Union

import numpy as np

from hagg_tf.data.sample_heads import SampleHeads
from hagg_tf.estimation.estimators import ThetaEstimate
from hagg_tf.model.io import read_json_record

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
#: Signature of the composite giving every per-image quantity (contract A): the raw outputs of
#: CNN^Df, CNN^ρ_reg, CNN^ρ_class and the features f(I) of CNN^0 and CNN^1, for (b, n) images.
PER_IMAGE_SIGNATURE = "serving_per_image"
#: Signature of the composite running the heads g of CNN^0 and CNN^1 on stacks of ν features.
CLUSTER_HEADS_SIGNATURE = "serving_cluster_heads"
#: Features f(I) of CNN^0 (plain preprocessing), (…, F0): an output of
#: :data:`PER_IMAGE_SIGNATURE` and an input of :data:`CLUSTER_HEADS_SIGNATURE`.
WO3_FEATURES = "wo3_cluster_size_features"
#: Features f(I) of CNN^1 (1/p-inverted preprocessing), (…, F1); as :data:`WO3_FEATURES`.
TIO2_FEATURES = "tio2_cluster_size_features"
#: Outputs of :data:`PER_IMAGE_SIGNATURE`, in order: three (b, n), then two (b, n, F).
PER_IMAGE_OUTPUTS = ("fractal_dimension_per_image", "mixing_ratio_regressor_per_image",
                     "homogeneous_probability_per_image", WO3_FEATURES, TIO2_FEATURES)
#: Outputs of :data:`CLUSTER_HEADS_SIGNATURE`, (k,) each: the heads before rounding.
CLUSTER_HEAD_OUTPUTS = ("wo3_cluster_size_raw", "tio2_cluster_size_raw")
#: LiteRT conversion of :data:`PER_IMAGE_SIGNATURE` and :data:`CLUSTER_HEADS_SIGNATURE`, in the
#: version directory beside ``saved_model.pb`` (written by :mod:`hagg_tf.export.litert`, run by
#: :mod:`hagg_tf.estimation.litert_model` without TensorFlow).
LITERT_FILENAME = "characterize.tflite"
#: Record of that conversion beside it: the SavedModel it came from and the check it passed.
LITERT_RECORD_FILENAME = "characterize.tflite.json"
#: Format tag of the record.
LITERT_RECORD_FORMAT = "hagg_tf litert conversion"
#: Runtimes of :func:`load_characterize_model` (``hagg-characterize --runtime``).
RUNTIMES = ("auto", "litert", "savedmodel")


#: Metadata key of a composite export's test-time symmetry averaging: the per-image outputs and
#: features are means over this many elements of the square's symmetry group
#: (:func:`hagg_tf.data.pooled.square_symmetry`); absent in exports written before it (1).
TEST_TIME_SYMMETRIES_KEY = "test_time_symmetries"


def averaged_symmetries(metadata: Optional[dict]) -> int:
    """Symmetries a composite export averages its per-image passes over (1: none)."""
    return int((metadata or {}).get(TEST_TIME_SYMMETRIES_KEY) or 1)


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
    return read_json_record(path, METADATA_FORMAT, "characterize export's metadata")


def export_sample_heads(version_dir: Union[str, os.PathLike], metadata: dict
                        ) -> Optional[SampleHeads]:
    """The sample heads of a composite export (:mod:`hagg_tf.data.sample_heads`), None for an
    export without them (θ̂_Df and θ̂_ρ are then the means of Eqs. 13–14).

    Raises:
        ValueError: the metadata names a sample-heads file that is missing or unreadable.
    """
    record = (metadata.get("estimators") or {}).get("sample_heads")
    if not record:
        return None
    path = pathlib.Path(version_dir) / record["file"]
    try:
        return SampleHeads.load(path)
    except FileNotFoundError:
        raise ValueError(f"{path} missing: the export's metadata says θ̂_Df and θ̂_ρ come from "
                         "sample heads stored there (copy the whole version directory)") from None


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


class CompositeRuntime:
    """What every runtime of the composite export shares: the export's facts, read from its
    metadata, and contract A (``per_image``, ``cluster_heads``) with its input checks.

    A runtime sets ``version_dir`` and ``metadata`` (:func:`find_model`) and runs the two
    signatures in :meth:`_run_per_image` and :meth:`_run_cluster_heads`, which receive checked
    float32 arrays; :class:`CharacterizeModel` (the SavedModel on TensorFlow) and
    :class:`~hagg_tf.estimation.litert_model.LiteRTCharacterizeModel` (its LiteRT conversion)
    are the two.

    Attributes:
        version_dir: the loaded version directory.
        metadata: its ``hagg_tf_export.json``.
    """

    #: Whether contract A is there to run: True for every runtime of an export with the two
    #: signatures; an older SavedModel without them is used through ``estimate`` alone.
    has_per_image_outputs = True

    version_dir: pathlib.Path
    metadata: dict

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

    @property
    def sample_heads(self) -> Optional[SampleHeads]:
        """The export's sample heads of θ̂_Df and θ̂_ρ (:func:`export_sample_heads`), read once."""
        if not hasattr(self, "_sample_heads"):
            self._sample_heads = export_sample_heads(self.version_dir, self.metadata)
        return self._sample_heads

    def _check_sample(self, counts: np.ndarray) -> np.ndarray:
        """``counts`` of :meth:`estimate` as an array, refused unless (n, H, W) with n ≥ ν."""
        counts = np.asarray(counts)
        if counts.ndim != 3:
            raise ValueError(f"expected (n, H, W) images of one sample, got shape {counts.shape}")
        if counts.shape[0] < self.num_images:
            raise ValueError(f"{counts.shape[0]} images, but the multi-image networks need at "
                             f"least nu = {self.num_images}")
        return counts

    def per_image(self, counts: np.ndarray, electrons_per_pixel: np.ndarray
                  ) -> dict[str, np.ndarray]:
        """The per-image part of the estimate (:data:`PER_IMAGE_SIGNATURE`), any n ≥ 1.

        Args:
            counts: (n, H, W) or (b, n, H, W) detector counts, float32 or convertible.
            electrons_per_pixel: (n,) or (b, n) incident electrons per pixel.

        Returns:
            ``{name: array}`` for :data:`PER_IMAGE_OUTPUTS`: ``fractal_dimension_per_image``,
            ``mixing_ratio_regressor_per_image``, ``homogeneous_probability_per_image`` (b, n)
            and the features ``wo3_cluster_size_features`` (b, n, F0),
            ``tio2_cluster_size_features`` (b, n, F1); without the b axis for 3-D ``counts``.
        """
        counts = np.asarray(counts, dtype=np.float32)
        electrons = np.asarray(electrons_per_pixel, dtype=np.float32)
        single = counts.ndim == 3
        if single:
            counts, electrons = counts[np.newaxis], electrons.reshape(1, -1)
        if counts.ndim != 4 or counts.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected (n, H, W) or (b, n, H, W) images of "
                             f"{self.image_size}×{self.image_size} px, got shape {counts.shape}")
        outputs = self._run_per_image(counts, electrons)
        return {key: outputs[key][0] if single else outputs[key] for key in PER_IMAGE_OUTPUTS}

    def cluster_heads(self, wo3_features: np.ndarray, tio2_features: np.ndarray
                      ) -> dict[str, np.ndarray]:
        """The heads g of CNN^0 and CNN^1 on k stacks of ν features
        (:data:`CLUSTER_HEADS_SIGNATURE`).

        Args:
            wo3_features: (k, ν, F0) features of CNN^0 (from :meth:`per_image`), slot order.
            tio2_features: (k, ν, F1) features of CNN^1.

        Returns:
            ``{"wo3_cluster_size_raw": (k,), "tio2_cluster_size_raw": (k,)}``, before rounding.
        """
        arrays = {WO3_FEATURES: np.asarray(wo3_features, dtype=np.float32),
                  TIO2_FEATURES: np.asarray(tio2_features, dtype=np.float32)}
        for name, array in arrays.items():
            if array.ndim != 3 or array.shape[1] != self.num_images:
                raise ValueError(f"{name} must be (k, nu = {self.num_images}, F), got shape "
                                 f"{array.shape}")
        outputs = self._run_cluster_heads(arrays)
        return {key: outputs[key] for key in CLUSTER_HEAD_OUTPUTS}

    def _run_per_image(self, counts: np.ndarray, electrons: np.ndarray) -> dict[str, np.ndarray]:
        """:data:`PER_IMAGE_SIGNATURE` on checked (b, n, H, W) counts and (b, n) electrons."""
        raise NotImplementedError

    def _run_cluster_heads(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:data:`CLUSTER_HEADS_SIGNATURE` on checked (k, ν, F) features, by input name."""
        raise NotImplementedError


class CharacterizeModel(CompositeRuntime):
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
    def has_per_image_outputs(self) -> bool:
        """True if the SavedModel has contract A's two signatures (exports written before
        them have only the θ̂ signatures)."""
        signatures = self._loaded.signatures
        return PER_IMAGE_SIGNATURE in signatures and CLUSTER_HEADS_SIGNATURE in signatures

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
        counts = self._check_sample(counts)
        if counts.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}×{self.image_size} pixels, got "
                             f"{counts.shape[1]}×{counts.shape[2]} (see prepare_images)")
        return ThetaEstimate.from_outputs(self.outputs(counts, electrons_per_pixel))

    def _signature(self, name: str):
        try:
            return self._loaded.signatures[name]
        except KeyError:
            raise ValueError(f"{self.version_dir} has no signature {name!r} (exported before it "
                             "existed); re-export it with hagg-export-models") from None

    def _run_per_image(self, counts: np.ndarray, electrons: np.ndarray) -> dict[str, np.ndarray]:
        result = self._signature(PER_IMAGE_SIGNATURE)(
            images=self._tf.constant(counts), electrons_per_pixel=self._tf.constant(electrons))
        return {key: result[key].numpy() for key in PER_IMAGE_OUTPUTS}

    def _run_cluster_heads(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._signature(CLUSTER_HEADS_SIGNATURE)(
            **{name: self._tf.constant(array) for name, array in arrays.items()})
        return {key: result[key].numpy() for key in CLUSTER_HEAD_OUTPUTS}


def saved_model_digest(version_dir: Union[str, os.PathLike]) -> str:
    """SHA-256 of the SavedModel's ``fingerprint.pb`` (TensorFlow's own checksums of the graph
    and the weights), or of ``saved_model.pb`` and ``variables/variables.index`` where an older
    TensorFlow wrote no fingerprint: what ties a LiteRT conversion to the SavedModel it came
    from."""
    import hashlib

    version_dir = pathlib.Path(version_dir)
    fingerprint = version_dir / "fingerprint.pb"
    parts = [fingerprint] if fingerprint.is_file() else [
        version_dir / "saved_model.pb", version_dir / "variables" / "variables.index"]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes())
    return digest.hexdigest()


class LiteRTUnusable(ValueError):
    """The LiteRT conversion of an export cannot be run (the message says why)."""


def litert_unusable(version_dir: Union[str, os.PathLike]) -> Optional[str]:
    """Why the LiteRT conversion in ``version_dir`` cannot be used (None: it can).

    It can when :data:`LITERT_FILENAME` and its record are there, the record names this very
    SavedModel (:func:`saved_model_digest`) and this very ``.tflite`` (its SHA-256: a replaced
    or truncated file is not run), and ``ai_edge_litert`` is installed.
    """
    import hashlib
    import importlib.util

    version_dir = pathlib.Path(version_dir)
    path, record_path = version_dir / LITERT_FILENAME, version_dir / LITERT_RECORD_FILENAME
    if not path.is_file() or not record_path.is_file():
        return (f"{version_dir} has no LiteRT conversion ({LITERT_FILENAME} and "
                f"{LITERT_RECORD_FILENAME}; hagg-export-models --litert writes them)")
    try:
        record = read_json_record(record_path, LITERT_RECORD_FORMAT,
                                  "record of hagg_tf's LiteRT conversion")
    except ValueError as error:
        return str(error)
    if record.get("saved_model_digest") != saved_model_digest(version_dir):
        return (f"{path} was converted from another SavedModel than the one beside it "
                "(stale); convert it again (hagg-export-models --litert)")
    if record.get("tflite_sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return (f"{path} is not the file its record {record_path.name} describes (changed or "
                "truncated); convert it again (hagg-export-models --litert)")
    if importlib.util.find_spec("ai_edge_litert") is None:
        return "ai-edge-litert is not installed (pip install ai-edge-litert)"
    return None


def load_characterize_model(path: Optional[Union[str, os.PathLike]] = None,
                            runtime: str = "auto"):
    """The composite model at ``path`` on the runtime asked for.

    Args:
        path: export base, model or version directory; None: :func:`default_model_dir`.
        runtime: ``"litert"`` (:class:`~hagg_tf.estimation.litert_model.LiteRTCharacterizeModel`,
            no TensorFlow), ``"savedmodel"`` (:class:`CharacterizeModel`) or ``"auto"``: LiteRT
            where :func:`litert_unusable` finds nothing against it, else the SavedModel. Both
            have the same methods (contract A and ``estimate``).

    Raises:
        ValueError: unknown ``runtime``; ``"litert"`` asked for but unusable (the message says
            why); the export's metadata is unreadable.
        FileNotFoundError: no export at ``path``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    version_dir, _ = find_model(path)
    if runtime != "savedmodel":
        from hagg_tf.estimation.litert_model import LiteRTCharacterizeModel

        try:  # the constructor checks the conversion (litert_unusable) once
            return LiteRTCharacterizeModel(version_dir)
        except LiteRTUnusable as reason:
            if runtime == "litert":
                raise ValueError(f"runtime litert: {reason}") from None
    return CharacterizeModel(version_dir)
