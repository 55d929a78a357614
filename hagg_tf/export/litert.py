"""The composite's per-image and cluster-head signatures as one LiteRT (TensorFlow Lite) model.

``hagg-characterize`` on a fresh process spends most of its time importing TensorFlow and
loading the SavedModel, not running the networks. Everything characterize needs comes from two
signatures of the composite SavedModel (:data:`~hagg_tf.estimation.model.PER_IMAGE_SIGNATURE`,
:data:`~hagg_tf.estimation.model.CLUSTER_HEADS_SIGNATURE`, see
:mod:`hagg_tf.export.characterize`), so :func:`write_litert_model` converts just those into
``<version dir>/characterize.tflite``, which :mod:`hagg_tf.estimation.litert_model` runs with
the ``ai-edge-litert`` interpreter alone (no TensorFlow in the process). The SavedModel stays the
serving artefact; the ``.tflite`` is a derived copy for the command line.

The conversion keeps float32 weights (float16 storage would move the outputs by far more than
the 1e-5 they must agree to), runs only LiteRT builtin operators (no Flex/TensorFlow ops), and
is checked before it is written: both runtimes run on a set of synthetic images and the largest
difference of every output must stay within :func:`allowed_difference`. The record
beside the file (:data:`~hagg_tf.estimation.model.LITERT_RECORD_FILENAME`) names the SavedModel
it came from (a digest of its ``fingerprint.pb``), so a stale ``.tflite`` is never used.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from typing import Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.model import (CLUSTER_HEADS_SIGNATURE, LITERT_FILENAME,
                                      LITERT_RECORD_FILENAME, LITERT_RECORD_FORMAT,
                                      PER_IMAGE_SIGNATURE, read_metadata,
                                      resolve_version_dir, saved_model_digest)
from hagg_tf.model.io import atomic_write, write_json_atomic
from hagg_tf.tensorflow_import import import_tensorflow_quietly

#: Signatures converted by default: all that characterize needs (contract A).
LITERT_SIGNATURES = (PER_IMAGE_SIGNATURE, CLUSTER_HEADS_SIGNATURE)
#: Largest difference between a LiteRT output and the SavedModel's, relative to the output's
#: scale (its largest absolute value, at least 1): absolute for the networks' outputs (≤ 1 or a
#: few), relative for the features f(I) (up to ~15), whose float32 rounding (half an ulp is
#: 5e-7 at 8) differs between any two CPU kernel libraries, TensorFlow's own oneDNN and Eigen
#: kernels included, by up to ~1e-4 after CNN^0's layers.
CONVERSION_TOLERANCE = 1e-5
#: CNN^0's outputs, where float32 arithmetic itself is not that exact: on the shipped networks
#: TensorFlow's oneDNN and Eigen kernels differ by 0.6–0.9e-5 of the output on the same images.
FLOAT_NOISE_OUTPUTS = ("wo3_cluster_size_features", "wo3_cluster_size_raw")
#: The tolerance for :data:`FLOAT_NOISE_OUTPUTS`, relative as :data:`CONVERSION_TOLERANCE`.
FLOAT_NOISE_TOLERANCE = 2e-5
#: Synthetic images of the conversion check (at least ν; 2 samples of this many images).
CHECK_IMAGES = 12


class LiteRTConversionError(RuntimeError):
    """The SavedModel could not be converted, or the conversion disagrees with it."""


def _signature_inputs(signature) -> dict:
    """``{input name: TensorSpec}`` of a loaded signature."""
    return dict(signature.structured_input_signature[1])


def check_inputs(version_dir: pathlib.Path, loaded, signature_keys: Sequence[str],
                 seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Inputs for every signature to compare the two runtimes on.

    The per-image signature gets ``CHECK_IMAGES`` images of Poisson counts of a blurred blob
    field (2 samples, realistic dynamic range with a dark background, so that the 1/p inversion
    and the quantization both act); signatures taking features get the SavedModel's own features
    of those images, in cyclic ν-stacks; any other signature gets uniform random inputs of its
    spec (free dimensions 2).
    """
    metadata = read_metadata(version_dir)
    size, num_images = int(metadata["image_size"]), int(metadata["num_images"])
    count = max(CHECK_IMAGES, num_images)
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    images = np.empty((2, count, size, size), np.float32)
    for sample in range(2):
        for image in range(count):
            centres = rng.uniform(-0.6, 0.6, (8, 2))
            field = sum(np.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / 0.01)
                        for cx, cy in centres)
            images[sample, image] = rng.poisson(40.0 * field + 0.02)
    electrons = np.full((2, count), 100.0, np.float32)
    inputs: dict[str, dict[str, np.ndarray]] = {}
    features = None
    if PER_IMAGE_SIGNATURE in loaded.signatures:
        per_image = {"images": images, "electrons_per_pixel": electrons}
        features = {key: value.numpy() for key, value in
                    loaded.signatures[PER_IMAGE_SIGNATURE](**per_image).items()}
        if PER_IMAGE_SIGNATURE in signature_keys:
            inputs[PER_IMAGE_SIGNATURE] = per_image
    stacks = (np.arange(count)[:, None] + np.arange(num_images)[None, :]) % count
    for key in signature_keys:
        if key in inputs:
            continue
        specs = _signature_inputs(loaded.signatures[key])
        values = {}
        for name, spec in specs.items():
            if features is not None and name in features:
                values[name] = features[name][0][stacks]          # (k, ν, F)
            else:
                shape = [2 if dim is None else int(dim) for dim in spec.shape]
                values[name] = rng.uniform(0.0, 1.0, shape).astype(spec.dtype.as_numpy_dtype)
        inputs[key] = values
    return inputs


def convert_signatures(version_dir: Union[str, os.PathLike],
                       signature_keys: Sequence[str] = LITERT_SIGNATURES) -> tuple[bytes, object]:
    """The flatbuffer of a LiteRT model holding ``signature_keys`` of a SavedModel.

    Args:
        version_dir: the composite's version directory (or a directory above it).
        signature_keys: signatures to convert, by name; each keeps its name, inputs and outputs.

    Returns:
        (the ``.tflite`` bytes, the loaded SavedModel).

    Raises:
        LiteRTConversionError: a signature is missing or holds operations LiteRT lacks.
    """
    tf = import_tensorflow_quietly()
    version_dir = resolve_version_dir(version_dir)
    loaded = tf.saved_model.load(str(version_dir))
    missing = [key for key in signature_keys if key not in loaded.signatures]
    if missing:
        raise LiteRTConversionError(
            f"{version_dir} has no signature {', '.join(map(repr, missing))} (it has "
            f"{', '.join(sorted(loaded.signatures))}); re-export it with hagg-export-models")
    # The converter, given several keys, takes a SavedModel with a `serve` attribute (the
    # composite's module has one) for a Keras model.export artefact and converts its
    # serving_default instead (TF 2.21 lite.py); a copy holding only the wanted signatures is
    # converted as asked.
    holder = tf.Module()
    holder.model = loaded
    with tempfile.TemporaryDirectory(prefix="hagg-litert-") as copy:
        tf.saved_model.save(holder, copy,
                            signatures={key: loaded.signatures[key] for key in signature_keys})
        converter = tf.lite.TFLiteConverter.from_saved_model(copy,
                                                             signature_keys=list(signature_keys))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises its own ConverterError types
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise LiteRTConversionError(f"{version_dir}: LiteRT conversion of "
                                        f"{list(signature_keys)} failed: {first}") from error
    return flatbuffer, loaded


def output_tolerance(output: str, tolerance: float = CONVERSION_TOLERANCE) -> float:
    """The relative tolerance of one output (``"<signature>/<output>"`` or ``"<output>"``):
    :data:`FLOAT_NOISE_TOLERANCE` (scaled like ``tolerance``) for CNN^0's, else ``tolerance``."""
    if output.rsplit("/", 1)[-1] in FLOAT_NOISE_OUTPUTS:
        return float(tolerance) * FLOAT_NOISE_TOLERANCE / CONVERSION_TOLERANCE
    return float(tolerance)


def allowed_difference(scale: float, tolerance: float = CONVERSION_TOLERANCE) -> float:
    """The largest |LiteRT − SavedModel| allowed for an output whose values reach ``scale``
    in absolute value: ``tolerance · max(1, scale)``."""
    return float(tolerance) * max(1.0, float(scale))


def compare_runtimes(flatbuffer: bytes, loaded, inputs: dict) -> dict[str, dict[str, float]]:
    """Largest absolute difference of every output between LiteRT and the SavedModel.

    Returns:
        ``{"<signature>/<output>": {"max_abs_difference": max |LiteRT − SavedModel|,
        "scale": max |SavedModel|}}``.
    """
    from hagg_tf.estimation.litert_model import make_interpreter

    tf = import_tensorflow_quietly()
    interpreter = make_interpreter(model_content=flatbuffer)
    differences = {}
    for key, values in inputs.items():
        expected = loaded.signatures[key](**{name: tf.constant(value)
                                             for name, value in values.items()})
        got = interpreter.get_signature_runner(key)(**values)
        for name, value in expected.items():
            reference = value.numpy().astype(np.float64)
            if got[name].shape != reference.shape:
                raise LiteRTConversionError(f"{key}/{name}: LiteRT gives shape "
                                            f"{got[name].shape}, the SavedModel {reference.shape}")
            differences[f"{key}/{name}"] = {
                "max_abs_difference": float(np.max(np.abs(got[name] - reference), initial=0.0)),
                "scale": float(np.max(np.abs(reference), initial=0.0))}
    return differences


def write_litert_model(version_dir: Union[str, os.PathLike],
                       signature_keys: Sequence[str] = LITERT_SIGNATURES, *,
                       tolerance: Optional[float] = CONVERSION_TOLERANCE) -> pathlib.Path:
    """Converts ``signature_keys`` of a composite export and writes
    ``<version dir>/characterize.tflite`` and its record (both atomically).

    Args:
        version_dir: the composite's version directory (or a directory above it).
        signature_keys: signatures to convert.
        tolerance: largest allowed difference of any output on the check images, relative to
            the output's scale (:func:`allowed_difference`); None skips the check (the record
            then says so).

    Returns:
        The path of the ``.tflite`` file.

    Raises:
        LiteRTConversionError: conversion failed or an output differs by more than
            ``tolerance`` (nothing is written then).
    """
    tf = import_tensorflow_quietly()
    version_dir = resolve_version_dir(version_dir)
    flatbuffer, loaded = convert_signatures(version_dir, signature_keys)
    differences = None
    if tolerance is not None:
        differences = compare_runtimes(flatbuffer, loaded,
                                       check_inputs(version_dir, loaded, signature_keys))
        for name, found in differences.items():
            allowed = allowed_difference(found["scale"], output_tolerance(name, tolerance))
            if found["max_abs_difference"] > allowed:
                raise LiteRTConversionError(
                    f"{version_dir}: the LiteRT conversion differs from the SavedModel by "
                    f"{found['max_abs_difference']:.3g} in {name} (values up to "
                    f"{found['scale']:.3g}, allowed {allowed:.3g}); not written")
    path = atomic_write(version_dir / LITERT_FILENAME, lambda stream: stream.write(flatbuffer))
    record = {
        "format": LITERT_RECORD_FORMAT,
        "file": LITERT_FILENAME,
        "signatures": list(signature_keys),
        "saved_model_digest": saved_model_digest(version_dir),
        "tflite_sha256": hashlib.sha256(flatbuffer).hexdigest(),
        "tensorflow": tf.__version__,
        "check": None if differences is None else {
            "inputs": f"{CHECK_IMAGES} synthetic images x 2 samples",
            "tolerance": f"{tolerance:g} x max(1, largest absolute value of the output); "
                         f"{output_tolerance(FLOAT_NOISE_OUTPUTS[0], tolerance):g} x for "
                         f"{', '.join(FLOAT_NOISE_OUTPUTS)}",
            "outputs": differences},
    }
    write_json_atomic(version_dir / LITERT_RECORD_FILENAME, record)
    return path
