"""TF Serving's REST and gRPC APIs for the composite characterize SavedModel (``hagg-serve``).

TensorFlow Serving itself (the C++ ``tensorflow_model_server``) is not a Python package; this
module serves the same SavedModel through the same two APIs, so that a client written for TF
Serving talks to ``hagg-serve`` unchanged and a deployment can move to TF Serving without
touching its clients:

* REST, as TF Serving documents it (https://www.tensorflow.org/tfx/serving/api_rest):
  ``GET /v1/models/<name>[/versions/<v>]`` (model status), ``GET …/metadata`` (the signatures,
  as ``SignatureDefMap`` JSON) and ``POST …:predict`` with ``instances`` (row format: one JSON
  object per sample, answered by ``predictions``, one object per sample) or ``inputs``
  (columnar format: one array per input, answered by ``outputs``). Errors are
  ``{"error": "…"}`` with HTTP 400 (bad payload), 404 (unknown model, version, label or URL),
  411 (no Content-Length), 413 (request larger than the bound) or 500.
* gRPC: ``tensorflow.serving.PredictionService`` (``Predict``, ``GetModelMetadata``; the
  servicer base class and messages of ``tensorflow-serving-api``) and
  ``tensorflow.serving.ModelService.GetModelStatus``; bad requests end with
  ``INVALID_ARGUMENT``, unknown models or versions with ``NOT_FOUND``, messages over the bound
  with ``RESOURCE_EXHAUSTED``.

Requests for the shipped model (signatures of :mod:`hagg_tf.export.characterize`): one sample is
``n ≥ ν`` images of ``H × W`` pixels at the networks' pixel size (``hagg_tf_export.json``:
``image_size``, ``num_images``, ``pixel_size_nm``), e.g. in row format::

    {"signature_name": "serving_default",
     "instances": [{"images": [[[...512 numbers...], ...512 rows...], ...n images...],
                    "electrons_per_pixel": [149.0, ...n numbers...]}]}

Every input is checked before the graph runs, and a bad one gets one message naming it: its
dtype (float inputs take JSON numbers, ``serving_uint16`` integers in [0, 65535]; over gRPC the
TensorProto's dtype must be the signature's), its rank and fixed sizes, the shared sizes of the
inputs (``b`` samples of ``n`` images, from the export's metadata), at least ν images per
sample, at most ``max_images`` images per request, finite values, counts ≥ 0 and electrons per
pixel > 0. The model computes the same θ̂ as ``hagg-characterize`` from the same prepared images
(:func:`hagg_tf.estimation.prepare_images`): preprocessing and estimators are in the graph.

The server reads the SavedModel and writes nothing: no file, no cache; its request log goes to
the ``logging`` logger :data:`LOGGER_NAME` (``hagg-serve --output=DIR`` sends it to a file in
``DIR``).
"""
from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from concurrent import futures
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.model import CHARACTERIZE_MODEL_NAME, CharacterizeModel
from hagg_tf.export.saved_model import DOSE_INPUT, IMAGES_INPUT
from hagg_tf.tensorflow_import import import_tensorflow_quietly

tf = import_tensorflow_quietly()

import grpc  # noqa: E402  (tensorflow-serving-api needs TensorFlow's protos: after the import)
from google.protobuf import json_format  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

#: Logger of the request log (one line per request) and of server errors.
LOGGER_NAME = "hagg_tf.serve"
#: The one metadata field TF Serving's GetModelMetadata knows.
SIGNATURE_DEF_FIELD = "signature_def"
#: Bytes one float32 value takes in a JSON request at most, with its separator: Python's
#: ``json`` writes a float32 converted to a Python float with up to 17 significant digits, a
#: sign and a two-digit exponent (``-1.1754943508222875e-38, ``).
JSON_BYTES_PER_VALUE = 25
#: Room for everything in a request besides the image values (JSON keys, brackets, the
#: electrons per pixel; gRPC's framing), bytes.
REQUEST_OVERHEAD_BYTES = 2 ** 20
#: Largest number of images in one request, as a multiple of ν, unless set: bounds the memory of
#: one prediction (the feature extractors see every image at once) and of a gRPC request's
#: binary tensors, which the byte bound lets through ~6× more of than JSON numbers.
MAX_IMAGES_PER_NU = 4
#: Predictions computed at the same time: TensorFlow already spreads one over all cores, so more
#: would only add memory (parsed JSON and feature maps); other requests wait their turn.
MAX_CONCURRENT_PREDICTIONS = 2
#: Seconds a REST connection may stay silent (while sending its request) before it is closed.
SOCKET_TIMEOUT_S = 60.0
#: Worker threads of the gRPC server.
GRPC_WORKERS = 4

_PREDICT_METHOD = tf.saved_model.PREDICT_METHOD_NAME
_DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
_SAVED_MODEL_FILENAME = "saved_model.pb"


class ServingError(Exception):
    """A request the server cannot answer; the message says why.

    Attributes:
        grpc_code: name of the ``grpc.StatusCode`` the gRPC API answers with.
        http_status: the HTTP status of the REST API.
    """

    grpc_code = "INTERNAL"
    http_status = 500


class InvalidRequestError(ServingError, ValueError):
    """A malformed request or an input the signature does not take (HTTP 400)."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class NotFoundError(ServingError, LookupError):
    """An unknown model name, version, version label or URL (HTTP 404)."""

    grpc_code = "NOT_FOUND"
    http_status = 404


class RequestTooLargeError(ServingError):
    """A request over the size bound (HTTP 413)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 413


class LengthRequiredError(ServingError):
    """A REST request body without a Content-Length (HTTP 411)."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 411


def _proto_dtype_name(dtype_enum: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype_enum)


class ServedModel:
    """The composite SavedModel as TF Serving serves it: one name, one version, its signatures.

    Args:
        model: a loaded :class:`~hagg_tf.estimation.CharacterizeModel` (reused as it is), or an
            export base, model or version directory (``None``: the shipped networks), loaded
            here.
        max_images: most images ``b·n`` one request may hold; None: :data:`MAX_IMAGES_PER_NU`
            × ν.

    Attributes:
        name: the model name clients address (``characterize``).
        version: the served version (the version directory's number).
        version_dir: the loaded version directory.
        metadata: its ``hagg_tf_export.json``.
        num_images: ν, the least images per sample.
        max_images: the most images per request.
        signature_defs: ``{name: SignatureDef}`` as stored in ``saved_model.pb`` (what TF
            Serving's GetModelMetadata returns).

    Raises:
        FileNotFoundError, ValueError: no composite export at ``model`` (from
            :func:`~hagg_tf.estimation.find_model`).
    """

    def __init__(self, model: Union[CharacterizeModel, str, os.PathLike, None] = None, *,
                 max_images: Optional[int] = None):
        if not isinstance(model, CharacterizeModel):
            model = CharacterizeModel(model)
        self._model = model
        self.version_dir = model.version_dir
        self.metadata = model.metadata
        self.name = str(self.metadata.get("model_name") or CHARACTERIZE_MODEL_NAME)
        self.version = (int(self.version_dir.name) if self.version_dir.name.isdigit()
                        else int(self.metadata.get("version", 1)))
        self.num_images = model.num_images
        self.max_images = int(max_images or MAX_IMAGES_PER_NU * self.num_images)
        if self.max_images < self.num_images:
            raise ValueError(f"max_images={self.max_images} is below nu = {self.num_images}, "
                             "the least images of one sample")
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((self.version_dir / _SAVED_MODEL_FILENAME).read_bytes())
        self.signature_defs = dict(saved.meta_graphs[0].signature_def)
        self._functions = model.saved_model.signatures
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_PREDICTIONS)
        output_order = list(self.metadata.get("outputs") or [])
        self._output_rank = {name: index for index, name in enumerate(output_order)}

    @property
    def image_size(self) -> int:
        """Side of the square network input, pixels."""
        return int(self.metadata["image_size"])

    def default_max_request_bytes(self) -> int:
        """A request bound that fits ν images of the model's size as JSON numbers.

        ν·H·W·:data:`JSON_BYTES_PER_VALUE` + :data:`REQUEST_OVERHEAD_BYTES`: 76 MiB for the
        shipped 12 × 512² px.
        """
        return (self.num_images * self.image_size ** 2 * JSON_BYTES_PER_VALUE
                + REQUEST_OVERHEAD_BYTES)

    # --- what the request addresses ----------------------------------------------------------

    def check_model_spec(self, name: str, version: Optional[int] = None,
                         label: Optional[str] = None) -> None:
        """Raises :class:`NotFoundError` unless the request addresses this model (and version).

        Args:
            name: the model name of the request.
            version: a specific version, or None for the served one.
            label: a version label (none are defined, so any label is unknown).
        """
        if name != self.name:
            raise NotFoundError(f"Servable not found for request: model {name!r} (this server "
                                f"serves {self.name!r})")
        if label:
            raise NotFoundError(f"Unrecognized servable version label: {label!r} (no labels "
                                f"are defined; version {self.version} is served)")
        if version is not None and int(version) != self.version:
            raise NotFoundError(f"Servable not found for request: {self.name!r} version "
                                f"{version} (version {self.version} is served)")

    def signature(self, name: str = "") -> tuple[str, Any]:
        """The name and SignatureDef of a predict signature (``""``: ``serving_default``).

        Raises:
            InvalidRequestError: no such signature, or not a predict signature.
        """
        name = name or _DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is not None and signature.method_name != _PREDICT_METHOD:
            raise InvalidRequestError(f"signature {name!r} is not a predict signature "
                                      f"(method {signature.method_name!r}); the predict "
                                      f"signatures are {', '.join(self.predict_signatures())}")
        if signature is None or name not in self._functions:
            raise InvalidRequestError(
                f"Serving signature name: {name!r} not found in signature def (the model has "
                f"{', '.join(self.predict_signatures())})")
        return name, signature

    def predict_signatures(self) -> list[str]:
        """Names of the signatures :meth:`predict` runs (``serving_default`` first)."""
        names = [name for name, signature in self.signature_defs.items()
                 if signature.method_name == _PREDICT_METHOD and name in self._functions]
        return sorted(names, key=lambda name: (name != _DEFAULT_SIGNATURE, name))

    # --- checking inputs ----------------------------------------------------------------------

    def check_input_names(self, signature_name: str, names: Iterable[str]) -> None:
        """Raises :class:`InvalidRequestError` unless ``names`` are the signature's inputs."""
        _, signature = self.signature(signature_name)
        expected, names = set(signature.inputs), set(names)
        missing, unknown = sorted(expected - names), sorted(names - expected)
        if missing or unknown:
            raise InvalidRequestError(
                f"signature {signature_name!r} takes the inputs {', '.join(sorted(expected))}"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; unknown: {', '.join(unknown)}" if unknown else ""))

    def check_shapes(self, signature_name: str, shapes: Mapping[str, Sequence[int]]) -> None:
        """Checks the input names and shapes of a request before any array is built.

        Args:
            signature_name: an existing predict signature (see :meth:`signature`).
            shapes: ``{input name: shape}``.

        Raises:
            InvalidRequestError: a missing or unknown input, a wrong rank or size, sizes that
                the inputs must share but do not (``b``, ``n``), fewer than ν images per sample,
                more than :attr:`max_images` images, an empty input.
        """
        _, signature = self.signature(signature_name)
        expected = dict(signature.inputs)
        self.check_input_names(signature_name, shapes)
        symbolic = (((self.metadata.get("signatures") or {}).get(signature_name) or {})
                    .get("inputs") or {})
        shapes = {name: tuple(int(size) for size in shapes[name]) for name in expected}
        dims = {name: [dim.size for dim in expected[name].tensor_shape.dim] for name in expected}
        wanted = {name: " × ".join(str(size) for size in (
            symbolic.get(name) or ["?" if size < 0 else size for size in dims[name]]))
            for name in expected}
        bound: dict[str, tuple[int, str]] = {}
        for name in sorted(expected):  # ranks, and the sizes the inputs share (b, n)
            shape = shapes[name]
            if len(shape) != len(dims[name]):
                raise InvalidRequestError(
                    f"input {name!r} has shape {list(shape)} (rank {len(shape)}); signature "
                    f"{signature_name!r} wants rank {len(dims[name])}: {wanted[name]}")
            if 0 in shape:
                raise InvalidRequestError(f"input {name!r} is empty (shape {list(shape)})")
            for axis, label in enumerate(symbolic.get(name) or []):
                if not isinstance(label, str) or axis >= len(shape):
                    continue
                if label in bound and bound[label][0] != shape[axis]:
                    raise InvalidRequestError(
                        f"inputs {bound[label][1]!r} and {name!r} disagree on {label} "
                        f"({bound[label][0]} vs {shape[axis]}): {name!r} is {wanted[name]}")
                bound.setdefault(label, (shape[axis], name))
        if IMAGES_INPUT in shapes and len(shapes[IMAGES_INPUT]) >= 2:
            samples, images = shapes[IMAGES_INPUT][:2]
            if images < self.num_images:
                raise InvalidRequestError(
                    f"{images} image(s) per sample, but the multi-image networks need at "
                    f"least nu = {self.num_images} images of each sample")
            if samples * images > self.max_images:
                raise InvalidRequestError(
                    f"{samples * images} images in one request, above the server's "
                    f"max_images = {self.max_images}; send fewer samples per request")
        for name in sorted(expected):  # the fixed sizes (the images' pixels)
            for axis, (size, fixed) in enumerate(zip(shapes[name], dims[name])):
                if fixed >= 0 and size != fixed:
                    raise InvalidRequestError(
                        f"input {name!r} has shape {list(shapes[name])}; axis {axis} must be "
                        f"{fixed} ({wanted[name]}: images prepared to the networks' "
                        f"{self.image_size}×{self.image_size} px, see "
                        "hagg_tf.estimation.prepare_images)")

    def _check_values(self, arrays: Mapping[str, np.ndarray]) -> None:
        counts_signature = DOSE_INPUT in arrays  # raw detector counts, not preprocessed images
        for name, array in arrays.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidRequestError(f"input {name!r} holds NaN or infinite values")
            if name == DOSE_INPUT and not (array > 0).all():
                raise InvalidRequestError(f"input {name!r} must be > 0 (incident electrons per "
                                          f"pixel of every image), got min {array.min():g}")
            if name == IMAGES_INPUT and counts_signature and (array < 0).any():
                raise InvalidRequestError(f"input {name!r} holds negative counts (min "
                                          f"{array.min():g}); detector counts are ≥ 0")

    def input_dtypes(self, signature_name: str) -> dict[str, np.dtype]:
        """``{input name: numpy dtype}`` of a signature."""
        _, signature = self.signature(signature_name)
        return {name: np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
                for name, info in signature.inputs.items()}

    # --- predicting ---------------------------------------------------------------------------

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray],
                output_filter: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Runs a signature on checked inputs.

        Args:
            signature_name: a predict signature (``""``: ``serving_default``).
            inputs: ``{input name: array}`` of the signature's dtypes and shapes.
            output_filter: names of the outputs to return (empty: all).

        Returns:
            ``{output name: array}`` in the export's output order.

        Raises:
            InvalidRequestError: see :meth:`check_shapes`; also a wrong dtype, non-finite
                values, negative counts, electrons per pixel ≤ 0, an unknown output name.
        """
        signature_name, signature = self.signature(signature_name)
        dtypes = self.input_dtypes(signature_name)
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        self.check_shapes(signature_name, {name: array.shape for name, array in arrays.items()})
        for name, array in arrays.items():
            if array.dtype != dtypes[name]:
                raise InvalidRequestError(f"input {name!r} is {array.dtype.name}; signature "
                                          f"{signature_name!r} wants {dtypes[name].name}")
        self._check_values(arrays)
        wanted = list(dict.fromkeys(output_filter))
        unknown = sorted(set(wanted) - set(signature.outputs))
        if unknown:
            raise InvalidRequestError(f"output_filter names unknown outputs: "
                                      f"{', '.join(unknown)} (signature {signature_name!r} has "
                                      f"{', '.join(self._ordered(signature.outputs))})")
        function = self._functions[signature_name]
        with self._slots:
            try:
                result = function(**{name: tf.constant(array) for name, array in arrays.items()})
            except tf.errors.InvalidArgumentError as error:
                raise InvalidRequestError(f"the model refused the inputs: {error.message}") \
                    from None
        names = wanted or self._ordered(result)
        return {name: result[name].numpy() for name in names}

    def _ordered(self, names: Iterable[str]) -> list[str]:
        return sorted(names, key=lambda name: (self._output_rank.get(name, len(self._output_rank)),
                                               name))

    # --- metadata and status as TF Serving's protos ------------------------------------------

    def model_spec(self, signature_name: Optional[str] = None):
        """A ``tensorflow.serving.ModelSpec`` naming this model and version."""
        spec = model_pb2.ModelSpec()
        spec.name = self.name
        spec.version.value = self.version
        if signature_name is not None:
            spec.signature_name = signature_name
        return spec

    def signature_def_map(self):
        """A ``tensorflow.serving.SignatureDefMap`` of every signature in ``saved_model.pb``."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        return signature_map

    def metadata_response(self, fields: Sequence[str] = (SIGNATURE_DEF_FIELD,)):
        """A ``GetModelMetadataResponse`` holding the ``signature_def`` metadata.

        Raises:
            InvalidRequestError: no field asked for, or one other than ``signature_def`` (as
                TF Serving).
        """
        if not fields:
            raise InvalidRequestError("GetModelMetadataRequest must specify at least one "
                                      f"metadata_field ({SIGNATURE_DEF_FIELD!r})")
        unknown = [field for field in fields if field != SIGNATURE_DEF_FIELD]
        if unknown:
            raise InvalidRequestError(f"Metadata field {unknown[0]!r} is not supported (only "
                                      f"{SIGNATURE_DEF_FIELD!r})")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(self.model_spec(signature_name=""))
        response.metadata[SIGNATURE_DEF_FIELD].Pack(self.signature_def_map())
        return response

    def status_response(self):
        """A ``GetModelStatusResponse``: the served version, AVAILABLE."""
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.version
        status.state = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
        status.status.SetInParent()  # error_code OK, written out as TF Serving does
        return response


# --- JSON (REST) ---------------------------------------------------------------------------------

def _message_json(message) -> dict:
    """A proto as TF Serving's REST API writes it (field names as in the .proto, defaults too)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(served: ServedModel) -> dict:
    """The body of ``GET /v1/models/<name>/metadata``."""
    return {"model_spec": _message_json(served.model_spec(signature_name="")),
            "metadata": {SIGNATURE_DEF_FIELD: _message_json(served.signature_def_map())}}


def status_json(served: ServedModel) -> dict:
    """The body of ``GET /v1/models/<name>[/versions/<v>]``."""
    return _message_json(served.status_response())


def _reject_constant(name: str):
    raise InvalidRequestError(f"bad JSON: {name} is not a number in JSON")


def _json_array(value: Any, name: str, dtype: np.dtype) -> np.ndarray:
    """A (nested) JSON list as an array of ``dtype``, refusing values of another kind."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidRequestError(f"input {name!r} is ragged: the nested lists of one axis must "
                                  "all have the same length") from None
    kind = array.dtype.kind
    if kind == "O":
        raise InvalidRequestError(f"input {name!r} holds null, objects or values of mixed "
                                  f"types; {dtype.name} needs numbers")
    if kind not in "iuf":
        found = {"b": "booleans", "U": "strings", "S": "strings"}.get(kind, array.dtype.name)
        raise InvalidRequestError(f"input {name!r} holds {found}; it is {dtype.name}")
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            return array.astype(dtype)
    if kind == "f":
        raise InvalidRequestError(f"input {name!r} holds non-integers; it is {dtype.name} "
                                  "(integer counts)")
    limits = np.iinfo(dtype)
    if array.min() < limits.min or array.max() > limits.max:
        raise InvalidRequestError(f"input {name!r} holds values outside [{limits.min}, "
                                  f"{limits.max}] ({dtype.name})")
    return array.astype(dtype)


def parse_predict_json(body: bytes, served: ServedModel) -> tuple[str, dict, bool]:
    """Reads the body of ``POST …:predict``.

    Args:
        body: the request body (UTF-8 JSON).
        served: the model (for the signature's input names and dtypes).

    Returns:
        (signature name, ``{input name: array}`` checked by :meth:`ServedModel.check_shapes`,
        True for the row format ``instances``, False for the columnar ``inputs``).

    Raises:
        InvalidRequestError: bad JSON, neither or both of ``instances`` and ``inputs``, inputs
            that do not fit the signature.
    """
    try:
        request = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InvalidRequestError(f"bad JSON in the request body: {error}") from None
    if not isinstance(request, dict):
        raise InvalidRequestError("the request body must be a JSON object with 'instances' or "
                                  "'inputs'")
    unknown = sorted(set(request) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise InvalidRequestError(f"unknown request fields: {', '.join(unknown)} (expected "
                                  "signature_name and one of instances, inputs)")
    if ("instances" in request) == ("inputs" in request):
        raise InvalidRequestError("the request must hold exactly one of 'instances' (row "
                                  "format) and 'inputs' (columnar format)")
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidRequestError("'signature_name' must be a string")
    signature_name, _ = served.signature(signature_name)
    dtypes = served.input_dtypes(signature_name)
    single = next(iter(dtypes)) if len(dtypes) == 1 else None
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidRequestError("'instances' must be a non-empty list, one entry per "
                                      "sample")
        if single is not None and not isinstance(instances[0], dict):
            instances = [{single: instance} for instance in instances]
        columns: dict[str, list] = {name: [] for name in dtypes}
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise InvalidRequestError(
                    f"instance {index} is not an object; with several inputs every instance "
                    f"names them: {{{', '.join(repr(name) for name in sorted(dtypes))}: …}}")
            served.check_input_names(signature_name, instance)
            for name in dtypes:
                columns[name].append(instance[name])
        raw = columns
    else:
        raw = request["inputs"]
        if single is not None and not isinstance(raw, dict):
            raw = {single: raw}
        if not isinstance(raw, dict):
            raise InvalidRequestError("'inputs' must be an object naming the inputs: "
                                      f"{', '.join(sorted(dtypes))}")
        served.check_input_names(signature_name, raw)
    arrays = {name: _json_array(raw[name], name, dtypes[name]) for name in dtypes}
    served.check_shapes(signature_name, {name: array.shape for name, array in arrays.items()})
    return signature_name, arrays, "instances" in request


def _json_values(array: np.ndarray):
    """Nested lists of an array, with NaN/∞ as null (JSON has no such numbers)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = array.astype(object)
        values[~np.isfinite(array)] = None
        return values.tolist()
    return array.tolist()


def predict_json(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    """The body of a predict response: ``predictions`` (row format) or ``outputs`` (columnar).

    As TF Serving: with one output its values stand alone, with several they are named.
    """
    if not row_format:
        values = {name: _json_values(value) for name, value in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    rows = len(next(iter(outputs.values())))
    if len(outputs) == 1:
        return {"predictions": _json_values(next(iter(outputs.values())))}
    columns = {name: _json_values(value) for name, value in outputs.items()}
    return {"predictions": [{name: column[row] for name, column in columns.items()}
                            for row in range(rows)]}


# --- the REST server -----------------------------------------------------------------------------

_URL = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                  r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                  r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$")


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API on :class:`RestServer` (see the module docstring)."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client's next request skips the connect
    server_version = "hagg-serve"
    timeout = SOCKET_TIMEOUT_S
    server: "RestServer"

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def handle_expect_100(self):
        # A client that asks first (curl does for large bodies) learns of a refusal before it
        # sends the body.
        try:
            self._content_length()
        except ServingError as error:
            self._send_error_json(error, close=True)
            return False
        return super().handle_expect_100()

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise LengthRequiredError("send the request body with a Content-Length, not "
                                      f"Transfer-Encoding: {self.headers['Transfer-Encoding']}")
        text = self.headers.get("Content-Length")
        if text is None:
            raise LengthRequiredError("a POST request needs a Content-Length")
        try:
            length = int(text)
        except ValueError:
            raise InvalidRequestError(f"bad Content-Length {text!r}") from None
        if length < 0:
            raise InvalidRequestError(f"bad Content-Length {text!r}")
        if length > self.server.max_request_bytes:
            raise RequestTooLargeError(
                f"request of {length} bytes is above the server's bound of "
                f"{self.server.max_request_bytes} bytes (--max_request_bytes); send fewer "
                "samples per request, or integer counts to serving_uint16")
        return length

    def _answer(self, method: str) -> None:
        served = self.server.served
        # a body left unread would be taken for the next request on this connection
        self._unread_body = (method == "POST" or
                             self.headers.get("Content-Length", "0").strip() not in ("", "0"))
        try:
            path = urllib.parse.urlsplit(self.path).path
            match = _URL.match(path)
            if match is None:
                raise NotFoundError(f"Malformed request: {method} {path} (the API is "
                                    f"/v1/models/{served.name}[/versions/N][/metadata|:predict])")
            version = match["version"]
            if version is not None and not version.isdigit():
                raise NotFoundError(f"Malformed request: version {version!r} is not a number")
            verb, metadata = match["verb"], match["metadata"]
            if method == "POST":
                length = self._content_length()
                body = self.rfile.read(length)
                self._unread_body = False
                if len(body) != length:
                    self.close_connection = True
                    return  # the client went away mid-request
            served.check_model_spec(match["name"], None if version is None else int(version),
                                    match["label"])
            if method == "GET" and verb is None:
                self._send_json(200, metadata_json(served) if metadata else status_json(served))
            elif method == "POST" and verb == "predict" and not metadata:
                signature, inputs, row_format = parse_predict_json(body, served)
                self._send_json(200, predict_json(served.predict(signature, inputs),
                                                  row_format))
            elif method == "POST" and verb in ("classify", "regress") and not metadata:
                raise InvalidRequestError(f"{verb} is not supported: {served.name!r} has "
                                          "predict signatures only (use :predict)")
            else:
                raise NotFoundError(f"Malformed request: {method} {path}")
        except ServingError as error:
            self._send_error_json(error)
        except Exception as error:  # a bug, not a bad request: say so, keep serving
            logging.getLogger(LOGGER_NAME).exception("internal error on %s %s", method,
                                                     self.path)
            self._send_error_json(ServingError(f"internal error: {type(error).__name__}: "
                                               f"{error}"))

    def _send_error_json(self, error: ServingError, close: bool = False) -> None:
        self._send_json(error.http_status, {"error": str(error)}, close=close)

    def _send_json(self, status: int, payload: dict, close: bool = False) -> None:
        body = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close or getattr(self, "_unread_body", False):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        # http.server's own refusals (malformed request line, unsupported method, …) as JSON
        error = ServingError(message or explain or http.HTTPStatus(code).phrase)
        error.http_status = code
        self._send_error_json(error, close=True)

    def log_message(self, format, *args):  # noqa: A002  (http.server's signature)
        logging.getLogger(LOGGER_NAME).info("%s %s", self.address_string(), format % args)


class RestServer(http.server.ThreadingHTTPServer):
    """TF Serving's REST API for one :class:`ServedModel` (a thread per connection).

    Args:
        served: the model.
        host: address to listen on (``"127.0.0.1"``: this machine only; ``"::1"`` works too).
        port: TCP port; 0 lets the system choose a free one (see :attr:`port`).
        max_request_bytes: largest request body; None: :meth:`ServedModel.
            default_max_request_bytes`.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, served: ServedModel, host: str, port: int,
                 max_request_bytes: Optional[int] = None):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.served = served
        self.max_request_bytes = int(max_request_bytes or served.default_max_request_bytes())
        super().__init__((host, port), _RestHandler)

    @property
    def port(self) -> int:
        """The TCP port listened on."""
        return self.server_address[1]


# --- the gRPC servicers --------------------------------------------------------------------------

def _check_proto_dtype(proto, name: str, dtype: np.dtype) -> None:
    wanted = tf.dtypes.as_dtype(dtype).as_datatype_enum
    if proto.dtype != wanted:
        raise InvalidRequestError(f"input {name!r} is {_proto_dtype_name(proto.dtype)}; the "
                                  f"signature wants {_proto_dtype_name(wanted)}")


def _tensor_proto_array(proto, name: str) -> np.ndarray:
    """A TensorProto's array (its dtype and shape were checked by the caller)."""
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as error:
        raise InvalidRequestError(f"input {name!r}: its values do not fill its shape "
                                  f"({error})") from None


def _proto_shape(proto, name: str) -> list[int]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidRequestError(f"input {name!r} has no shape (unknown rank)")
    return [dim.size for dim in proto.tensor_shape.dim]


def _requested_version(model_spec) -> tuple[Optional[int], Optional[str]]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return version, model_spec.version_label or None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata``.

    ``Classify``, ``Regress`` and ``MultiInference`` keep the base class's ``UNIMPLEMENTED``:
    the model has predict signatures only.
    """

    def __init__(self, served: ServedModel):
        self.served = served

    def Predict(self, request, context):  # noqa: N802  (the gRPC method's name)
        served = self.served
        try:
            served.check_model_spec(request.model_spec.name,
                                    *_requested_version(request.model_spec))
            signature_name, _ = served.signature(request.model_spec.signature_name)
            dtypes = served.input_dtypes(signature_name)
            served.check_input_names(signature_name, request.inputs)
            for name, proto in request.inputs.items():
                _check_proto_dtype(proto, name, dtypes[name])
            # the shapes before any array is built: a small message may declare a huge tensor
            served.check_shapes(signature_name, {name: _proto_shape(proto, name)
                                                 for name, proto in request.inputs.items()})
            inputs = {name: _tensor_proto_array(request.inputs[name], name) for name in dtypes}
            outputs = served.predict(signature_name, inputs, request.output_filter)
        except ServingError as error:
            context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(served.model_spec(signature_name))
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            self.served.check_model_spec(request.model_spec.name,
                                         *_requested_version(request.model_spec))
            return self.served.metadata_response(list(request.metadata_field))
        except ServingError as error:
            context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService.GetModelStatus`` (the gRPC twin of REST's status)."""

    def __init__(self, served: ServedModel):
        self.served = served

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            self.served.check_model_spec(request.model_spec.name,
                                         *_requested_version(request.model_spec))
            return self.served.status_response()
        except ServingError as error:
            context.abort(getattr(grpc.StatusCode, error.grpc_code), str(error))


def grpc_server(served: ServedModel, host: str, port: int,
                max_request_bytes: Optional[int] = None) -> tuple[Any, int]:
    """A started gRPC server with both servicers.

    Args:
        served: the model.
        host: address to listen on.
        port: TCP port; 0 lets the system choose.
        max_request_bytes: largest request message; None: :meth:`ServedModel.
            default_max_request_bytes`. Larger ones end with ``RESOURCE_EXHAUSTED``.

    Returns:
        (the ``grpc.Server``, the port it listens on).

    Raises:
        OSError: the address cannot be listened on.
    """
    limit = int(max_request_bytes or served.default_max_request_bytes())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS,
                                                    thread_name_prefix="hagg-serve-grpc"),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit),
                                  ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(served), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(served), server)
    if port:
        # gRPC's core would log its own failure on stderr; a probe says it in one message
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                raise OSError(error.errno, f"gRPC port {port}: {error.strerror}") from None
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:  # recent grpcio raises instead of returning 0
        raise OSError(f"gRPC port {port}: {error}") from None
    if not bound:
        raise OSError(f"gRPC port {port}: cannot listen on {address}")
    server.start()
    return server, bound


class ModelServers:
    """The running REST and gRPC servers of one :class:`ServedModel`; a context manager.

    Args:
        served: the model.
        host: address both listen on (required: ``hagg-serve`` defaults to loopback).
        rest_port, grpc_port: TCP ports; 0 lets the system choose; None: that API is off.
        max_request_bytes: the bound of both (None: :meth:`ServedModel.
            default_max_request_bytes`).

    Attributes:
        rest_port, grpc_port: the ports listened on (None where off).

    Raises:
        OSError: a port cannot be listened on (nothing is left running).
        ValueError: both APIs off.
    """

    def __init__(self, served: ServedModel, *, host: str, rest_port: Optional[int] = 0,
                 grpc_port: Optional[int] = 0, max_request_bytes: Optional[int] = None):
        if rest_port is None and grpc_port is None:
            raise ValueError("nothing to serve: both the REST and the gRPC API are off")
        self.served = served
        self.host = host
        self.max_request_bytes = int(max_request_bytes or served.default_max_request_bytes())
        self._rest, self._rest_thread, self._grpc = None, None, None
        self.rest_port = self.grpc_port = None
        try:
            if rest_port is not None:
                try:
                    self._rest = RestServer(served, host, rest_port, self.max_request_bytes)
                except OSError as error:
                    raise OSError(error.errno, f"REST port {rest_port}: "
                                               f"{error.strerror or error}") from None
                self.rest_port = self._rest.port
                self._rest_thread = threading.Thread(target=self._rest.serve_forever,
                                                     name="hagg-serve-rest", daemon=True)
                self._rest_thread.start()
            if grpc_port is not None:
                self._grpc, self.grpc_port = grpc_server(served, host, grpc_port,
                                                         self.max_request_bytes)
        except BaseException:
            self.close()
            raise

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def rest_url(self) -> Optional[str]:
        """``http://host:port`` of the REST API (None where off)."""
        return None if self.rest_port is None else f"http://{self._url_host()}:{self.rest_port}"

    @property
    def grpc_target(self) -> Optional[str]:
        """``host:port`` for ``grpc.insecure_channel`` (None where off)."""
        return None if self.grpc_port is None else f"{self._url_host()}:{self.grpc_port}"

    def close(self, grace_s: float = 1.0) -> None:
        """Stops both servers: no new requests; running ones get ``grace_s`` seconds."""
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait()
            self._grpc = None
        if self._rest is not None:
            if self._rest_thread is not None:
                self._rest.shutdown()
                self._rest_thread.join()
            self._rest.server_close()
            self._rest = None

    def __enter__(self) -> "ModelServers":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
