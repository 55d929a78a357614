"""SavedModel export of the hagg_tf networks for TensorFlow Serving (SPEC §10).

Layout written by :func:`export_network`::

    <export_dir_base>/<model_name>/<version>/      # what TF Serving loads (model_base_path =
        saved_model.pb, variables/, fingerprint.pb #  <export_dir_base>/<model_name>)
        hagg_tf_export.json                        # shapes, names, preprocessing (for clients)
        keras/<model_name>.keras                   # the Keras model, for keras.saving.load_model

Serving signatures (raw detector images in, one named scalar per sample out):

* ``serving_default``: input ``images`` float32 ``(batch, H, W)`` for single-image networks or
  ``(batch, nu, H, W)`` for multi-image networks, raw detector counts (or intensity fractions);
  CNN^1 additionally takes ``electrons_per_pixel`` float32 ``(batch,)`` resp. ``(batch, nu)``,
  the incident electrons per pixel of each image, needed to find the threshold t of Sec. 2.3.5.
  Output: ``{output_name: float32 (batch,)}``, e.g. ``fractal_dimension``.
* ``serving_uint16``: the same with ``images`` as uint16 counts, the on-disk format of hagg_tf
  images, so that gRPC clients can send them without conversion.

The preprocessing of :mod:`hagg_tf.networks.preprocessing` (the same TF function that the tf.data
pipelines use) runs inside these signatures, so clients never rescale or quantise themselves.
"""
from __future__ import annotations

import pathlib
import shutil
from typing import Optional, Union

import keras
import tensorflow as tf

from hagg_tf.model.io import write_json_atomic
from hagg_tf.networks.architecture import NETWORK_SPECS
from hagg_tf.networks.preprocessing import ImagePreprocessing

#: Name of the serving input holding the images.
IMAGES_INPUT = "images"
#: Name of the serving input holding the electrons per pixel (only with intensity inversion).
DOSE_INPUT = "electrons_per_pixel"
#: Name of the endpoint taking uint16 detector counts.
UINT16_ENDPOINT = "serving_uint16"
#: File with the export's metadata, next to saved_model.pb.
METADATA_FILENAME = "hagg_tf_export.json"


def _resolve_preprocessing(model: keras.Model, preprocessing) -> Optional[ImagePreprocessing]:
    if preprocessing == "auto":
        if model.name in NETWORK_SPECS:
            return ImagePreprocessing.for_network(model.name)
        return ImagePreprocessing()
    if preprocessing is None or isinstance(preprocessing, ImagePreprocessing):
        return preprocessing
    raise TypeError("preprocessing must be 'auto', None or an ImagePreprocessing, "
                    f"got {preprocessing!r}")


def export_network(model: keras.Model, export_dir_base: Union[str, pathlib.Path],
                   version: int = 1, preprocessing="auto", *, model_name: Optional[str] = None,
                   save_keras: bool = True, overwrite: bool = False) -> pathlib.Path:
    """Exports a network as a TF-Serving SavedModel with the preprocessing in the graph.

    Args:
        model: Network from :func:`hagg_tf.networks.build_network` (trained or not). Its input
            must be ``(batch, H, W, 1)`` or ``(batch, nu, H, W, 1)`` and its output
            ``(batch, 1)``.
        export_dir_base: Base directory of all exported models (TF Serving's model root).
        version: Positive integer version; TF Serving serves the highest one.
        preprocessing: ``"auto"`` (the paper's preprocessing for ``model.name``: scaling to
            [-0.5, 0.5] and 256 levels, plus the 1/p inversion for ``tio2_cluster_size``), an
            :class:`ImagePreprocessing`, or ``None`` to serve already preprocessed images.
        model_name: Directory name of the model; defaults to ``model.name``.
        save_keras: Also save ``keras/<model_name>.keras`` inside the version directory.
        overwrite: Replace an existing version directory; otherwise refuse, since served
            versions should never change under a running server.

    Returns:
        Path of the version directory ``<export_dir_base>/<model_name>/<version>``.

    Raises:
        FileExistsError: The version directory exists and ``overwrite`` is False.
        ValueError: Bad version or a model whose shapes do not fit.
    """
    version = int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    model_name = model_name or model.name
    version_dir = pathlib.Path(export_dir_base) / model_name / str(version)
    if version_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{version_dir} exists; pass overwrite=True to replace it")
        shutil.rmtree(version_dir)

    preprocessing = _resolve_preprocessing(model, preprocessing)
    input_shape = tuple(model.input_shape)
    if input_shape[-1] != 1 or len(input_shape) not in (4, 5):
        raise ValueError(f"expected model input (batch, [nu,] H, W, 1), got {input_shape}")
    image_shape = input_shape[1:-1]  # (H, W) or (nu, H, W), without the channel axis
    per_image_shape = input_shape[1:-3]  # () or (nu,): one dose value per image
    output_name = model.output_names[0]
    needs_dose = preprocessing is not None and preprocessing.needs_dose

    def serve(images, electrons_per_pixel=None):
        if preprocessing is None:
            network_input = tf.cast(images, tf.float32)
        else:
            network_input = preprocessing(images, electrons_per_pixel)
        prediction = model(network_input[..., tf.newaxis], training=False)
        return {output_name: tf.reshape(prediction, [-1])}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for endpoint, dtype in (("serving_default", tf.float32), (UINT16_ENDPOINT, tf.uint16)):
        signature = [tf.TensorSpec((None,) + image_shape, dtype, name=IMAGES_INPUT)]
        if needs_dose:
            signature.append(tf.TensorSpec((None,) + per_image_shape, tf.float32, name=DOSE_INPUT))
        # The argument names of the endpoint function become the serving input names.
        endpoint_fn = serve if needs_dose else (lambda images: serve(images))
        archive.add_endpoint(name=endpoint, fn=endpoint_fn, input_signature=signature)
    archive.write_out(str(version_dir), verbose=False)

    metadata = {
        "model_name": model_name,
        "version": version,
        "keras_model_name": model.name,
        "signatures": ["serving_default", UINT16_ENDPOINT],
        "inputs": {IMAGES_INPUT: [None, *image_shape]}
        | ({DOSE_INPUT: [None, *per_image_shape]} if needs_dose else {}),
        "outputs": {output_name: [None]},
        "preprocessing": None if preprocessing is None else preprocessing.to_config(),
        "network_input_shape": list(input_shape),
    }
    write_json_atomic(version_dir / METADATA_FILENAME, metadata)
    if save_keras:
        keras_dir = version_dir / "keras"
        keras_dir.mkdir()
        model.save(keras_dir / f"{model_name}.keras")
    return version_dir


def load_keras_network(version_dir: Union[str, pathlib.Path]) -> keras.Model:
    """Reloads the ``.keras`` copy saved by :func:`export_network` in ``version_dir``."""
    # Importing this module imported hagg_tf.networks.layers, which registered the custom layers.
    candidates = sorted((pathlib.Path(version_dir) / "keras").glob("*.keras"))
    if len(candidates) != 1:
        raise FileNotFoundError(f"expected one .keras file in {version_dir}/keras, "
                                f"found {len(candidates)}")
    return keras.saving.load_model(candidates[0])
