"""hagg-serve: TF Serving's REST and gRPC APIs on the shipped characterize model.

The servers run in this process on 127.0.0.1 with ports the system chooses (the model is loaded
once per module); they are called with plain HTTP (urllib, http.client) and with the official
``PredictionServiceStub`` of tensorflow-serving-api, and must give the θ̂ that
``hagg_tf.estimation.characterize`` (hagg-characterize) computes from the same example. One test
starts the command itself as a subprocess.
"""
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving.apis", reason="needs tensorflow-serving-api "
                    "(pip install 'hagg_tf[serve]')")
grpc = pytest.importorskip("grpc")

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sample_a"
from hagg_tf.estimation.model import resolve_version_dir  # noqa: E402

SHIPPED = REPO / "saved_models"
#: The shipped composite's version number, as TF Serving names it.
VERSION = resolve_version_dir(SHIPPED).name
HOST = "127.0.0.1"
MODEL = "characterize"
#: θ̂ of hagg-characterize's default runtime (LiteRT) against the served SavedModel: the
#: conversion's own tolerance (hagg_tf.export.litert.FLOAT_NOISE_TOLERANCE, relative).
RUNTIME_TOLERANCE = 2e-5


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def characterized():
    """The shipped SavedModel, and what hagg-characterize's function finds on examples/sample_a
    with the CLI's default runtime (LiteRT where the conversion is shipped)."""
    from hagg_tf.estimation import CharacterizeModel, characterize

    model = CharacterizeModel(SHIPPED)
    result = characterize(str(EXAMPLE), shadows=1, workers=1)
    return model, result


@pytest.fixture(scope="module")
def served(characterized):
    from hagg_tf.export.serving import ServedModel

    return ServedModel(characterized[0])


@pytest.fixture(scope="module")
def servers(served):
    from hagg_tf.export.serving import ModelServers

    with ModelServers(served, host=HOST, rest_port=0, grpc_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def sample(characterized):
    """(counts (n, 512, 512) float32, electrons per pixel (n,), expected ThetaEstimate)."""
    prepared, estimate = characterized[1].prepared, characterized[1].estimate
    return prepared.counts, prepared.electrons_per_pixel, estimate


@pytest.fixture(scope="module")
def stub(servers):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(servers.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _rest(servers, path, payload=None, *, body=None):
    """(HTTP status, decoded JSON body) of a GET (no payload) or POST."""
    if payload is not None:
        body = json.dumps(payload).encode()
    request = urllib.request.Request(servers.rest_url + path, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _assert_same_theta(outputs, expected):
    """The served outputs of one sample are hagg-characterize's estimate."""
    from hagg_tf.estimation import ThetaEstimate

    got = ThetaEstimate.from_outputs({name: np.asarray(value)[np.newaxis]
                                      for name, value in outputs.items()})
    assert got.theta[2:] == expected.theta[2:]  # cluster sizes rounded: exactly equal
    np.testing.assert_allclose(got.theta_raw, expected.theta_raw, rtol=RUNTIME_TOLERANCE,
                               atol=RUNTIME_TOLERANCE)
    for name in ("fractal_dimension_per_image", "mixing_ratio_per_image",
                 "homogeneous_probability_per_image", "wo3_cluster_size_per_subset",
                 "tio2_cluster_size_per_subset"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name),
                                   rtol=RUNTIME_TOLERANCE, atol=RUNTIME_TOLERANCE, err_msg=name)
    np.testing.assert_allclose(np.asarray(outputs["theta"], np.float64),
                               np.asarray(expected.theta, np.float64), rtol=RUNTIME_TOLERANCE,
                               atol=RUNTIME_TOLERANCE)


# --- the θ̂ of hagg-characterize through both APIs ------------------------------------------------

def test_rest_row_format_gives_the_theta_of_characterize(servers, sample):
    counts, electrons, expected = sample
    status, answer = _rest(servers, f"/v1/models/{MODEL}:predict", {
        "signature_name": "serving_default",
        "instances": [{"images": counts.tolist(), "electrons_per_pixel": electrons.tolist()}]})
    assert status == 200, answer
    (prediction,) = answer["predictions"]  # one sample, its outputs by name
    assert len(prediction["fractal_dimension_per_image"]) == len(counts) == 12
    _assert_same_theta(prediction, expected)


def test_rest_columnar_uint16_on_the_version_url_gives_the_same_theta(servers, sample):
    counts, electrons, expected = sample
    assert np.array_equal(counts, np.round(counts))  # 16-bit PNG counts, used as they are
    status, answer = _rest(servers, f"/v1/models/{MODEL}/versions/{VERSION}:predict", {
        "signature_name": "serving_uint16",
        "inputs": {"images": [counts.astype(np.uint16).tolist()],
                   "electrons_per_pixel": [electrons.tolist()]}})
    assert status == 200, answer
    outputs = answer["outputs"]  # columnar: every output as one (b, …) array
    assert np.asarray(outputs["theta"]).shape == (1, 4)
    _assert_same_theta({name: value[0] for name, value in outputs.items()}, expected)


def test_grpc_predict_with_the_official_stub_gives_the_same_theta(stub, sample):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    counts, electrons, expected = sample
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(counts[np.newaxis]))
    request.inputs["electrons_per_pixel"].CopyFrom(tf.make_tensor_proto(electrons[np.newaxis]))
    response = stub.Predict(request, timeout=120)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == int(VERSION)
    assert response.model_spec.signature_name == "serving_default"
    outputs = {name: tf.make_ndarray(proto)[0] for name, proto in response.outputs.items()}
    _assert_same_theta(outputs, expected)
    assert tf.make_ndarray(response.outputs["wo3_cluster_size"]).dtype == np.int32

    request.output_filter.append("theta")
    request.model_spec.version.value = int(VERSION)
    response = stub.Predict(request, timeout=120)
    assert list(response.outputs) == ["theta"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["theta"])[0], expected.theta,
                               rtol=RUNTIME_TOLERANCE, atol=RUNTIME_TOLERANCE)


# --- metadata and status --------------------------------------------------------------------------

def test_status_and_metadata_over_rest(servers):
    for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/{VERSION}"):
        status, answer = _rest(servers, path)
        assert status == 200
        assert answer == {"model_version_status": [
            {"version": VERSION, "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]}
    status, answer = _rest(servers, f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": MODEL, "signature_name": "", "version": VERSION}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_uint16", "serving_preprocessed"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    images = default["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT"
    assert [dim["size"] for dim in images["tensor_shape"]["dim"]] == ["-1", "-1", "512", "512"]
    assert signatures["serving_uint16"]["inputs"]["images"]["dtype"] == "DT_UINT16"
    assert set(signatures["serving_preprocessed"]["inputs"]) == {"images", "inverted_images"}
    assert {"theta", "theta_raw", "wo3_cluster_size"} <= set(default["outputs"])
    assert default["outputs"]["wo3_cluster_size"]["dtype"] == "DT_INT32"


def test_metadata_and_status_over_grpc(servers, stub):
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc)

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == int(VERSION)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert {"serving_default", "serving_uint16", "serving_preprocessed"} <= set(
        signature_map.signature_def)
    dims = signature_map.signature_def["serving_default"].inputs["images"].tensor_shape.dim
    assert [dim.size for dim in dims] == [-1, -1, 512, 512]

    del request.metadata_field[:]
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetModelMetadata(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with grpc.insecure_channel(servers.grpc_target) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(
                model_spec={"name": MODEL}), timeout=30)
    (version,) = status.model_version_status
    assert version.version == int(VERSION)
    assert version.state == get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


# --- what is refused ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/v1/models/other", "/v1/models/other/metadata", f"/v1/models/{MODEL}/versions/1",
    f"/v1/models/{MODEL}/versions/1/metadata", f"/v1/models/{MODEL}/labels/stable",
    f"/v1/models/{MODEL}/versions/two", "/v2/models", "/", f"/v1/models/{MODEL}:predict"])
def test_unknown_models_versions_labels_and_urls_are_404(servers, path):
    status, answer = _rest(servers, path)
    assert status == 404, answer
    assert list(answer) == ["error"] and answer["error"]


def _images(samples, images, side, value=1.0):
    return np.full((samples, images, side, side), value).tolist()


def _counts_instance(images=12, side=512, **overrides):
    instance = {"images": _images(1, images, side)[0],
                "electrons_per_pixel": [100.0] * images}
    instance.update(overrides)
    return instance


# Payloads refused before the model runs: each is small (the shape checks come before the
# pixels' sizes, so a sample of 3 images of 4² px is refused for its 3 images).
BAD_PAYLOADS = {
    "not JSON": (b'{"instances": [', "bad JSON"),
    "NaN literal": (b'{"inputs": {"images": NaN}}', "NaN is not a number"),
    "not an object": ([1, 2, 3], "JSON object"),
    "neither format": ({"signature_name": "serving_default"}, "exactly one of"),
    "both formats": ({"instances": [], "inputs": {}}, "exactly one of"),
    "unknown field": ({"instances": [{}], "examples": []}, "unknown request fields"),
    "unknown signature": ({"signature_name": "serving_fast", "instances": [{}]},
                          "serving_fast"),
    "init op signature": ({"signature_name": "__saved_model_init_op", "instances": [{}]},
                          "not a predict signature"),
    "empty instances": ({"instances": []}, "non-empty list"),
    "instance not an object": ({"instances": [[1.0, 2.0]]}, "not an object"),
    "missing input": ({"instances": [{"images": [[[0.0]]]}]}, "missing: electrons_per_pixel"),
    "unknown input": ({"inputs": {"images": [], "electrons_per_pixel": [], "dose": []}},
                      "unknown: dose"),
    "too few images": ({"instances": [_counts_instance(images=3, side=4)]},
                       "least nu = 12"),
    "wrong image size": ({"instances": [_counts_instance(side=4)]}, "axis 2 must be 512"),
    "wrong rank": ({"inputs": {"images": [[0.0] * 4] * 12, "electrons_per_pixel": [[1.0]]}},
                   "wants rank 4"),
    "n disagrees": ({"inputs": {"images": _images(1, 12, 4),
                                "electrons_per_pixel": [[100.0] * 11]}}, "disagree on n"),
    "b disagrees": ({"inputs": {"images": _images(1, 12, 4),
                                "electrons_per_pixel": [[100.0] * 12] * 2}}, "disagree on b"),
    "ragged": ({"instances": [_counts_instance(
        images=12, side=4, electrons_per_pixel=[1.0, [2.0]] + [1.0] * 10)]}, "ragged"),
    "strings": ({"instances": [_counts_instance(
        side=4, electrons_per_pixel=["a"] * 12)]}, "strings"),
    "booleans": ({"instances": [_counts_instance(
        side=4, electrons_per_pixel=[True] * 12)]}, "booleans"),
    "null": ({"instances": [_counts_instance(side=4, electrons_per_pixel=[None] * 12)]},
             "null"),
    "floats for uint16": ({"signature_name": "serving_uint16", "instances": [
        _counts_instance(side=4)]}, "non-integers"),
    "uint16 overflow": ({"signature_name": "serving_uint16", "inputs": {
        "images": np.full((1, 12, 4, 4), 70000).tolist(),
        "electrons_per_pixel": [[100.0] * 12]}}, "outside [0, 65535]"),
    "too many images": ({"inputs": {"images": _images(5, 12, 1),
                                    "electrons_per_pixel": [[1.0] * 12] * 5}},
                        "max_images = 48"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_payloads_are_400_with_a_message(servers, case):
    payload, fragment = BAD_PAYLOADS[case]
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, answer = _rest(servers, f"/v1/models/{MODEL}:predict", body=body)
    assert status == 400, answer
    assert list(answer) == ["error"] and fragment in answer["error"], answer


def test_bad_values_are_refused_before_the_model_runs(servers, stub, sample):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    counts, electrons, _ = sample
    negative = counts.copy()
    negative[3, 10, 10] = -1.0
    instance = {"images": negative.tolist(), "electrons_per_pixel": electrons.tolist()}
    status, answer = _rest(servers, f"/v1/models/{MODEL}:predict", {"instances": [instance]})
    assert status == 400 and "negative counts" in answer["error"], answer
    zero, infinite = electrons.copy(), electrons.copy()
    zero[5], infinite[0] = 0.0, np.inf
    for images, dose, fragment in ((negative, electrons, "negative counts"),
                                   (counts, zero, "must be > 0"),
                                   (counts, infinite, "NaN or infinite")):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images[np.newaxis]))
        request.inputs["electrons_per_pixel"].CopyFrom(tf.make_tensor_proto(dose[np.newaxis]))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in refused.value.details(), refused.value.details()
    # a JSON number beyond float32 becomes ∞ when cast, and is refused as such
    from hagg_tf.export.serving import InvalidRequestError, _json_array

    beyond = _json_array([[1e39] * 12], "electrons_per_pixel", np.dtype(np.float32))
    with pytest.raises(InvalidRequestError, match="NaN or infinite"):
        servers.served.predict("serving_default", {"images": counts[np.newaxis],
                                                   "electrons_per_pixel": beyond})


def test_grpc_refusals_have_tf_servings_status_codes(stub, served):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    def predict(images, electrons, name=MODEL, version=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        request.inputs["electrons_per_pixel"].CopyFrom(tf.make_tensor_proto(electrons))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=60)
        return refused.value.code(), refused.value.details()

    few = np.ones((1, 3, 4, 4), np.float32)
    electrons = np.full((1, 3), 100.0, np.float32)
    code, details = predict(few, electrons)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "least nu = 12" in details
    code, details = predict(few.astype(np.float64), electrons)  # TF Serving wants DT_FLOAT too
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DT_DOUBLE" in details, details
    # 1000 images of 512² declared (1 GB), one value sent: refused from the shape, unallocated
    huge = tf.make_tensor_proto(np.float32(1.0))
    for size in (1, 1000, 512, 512):
        huge.tensor_shape.dim.add().size = size
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["images"].CopyFrom(huge)
    request.inputs["electrons_per_pixel"].CopyFrom(
        tf.make_tensor_proto(np.ones((1, 1000), np.float32)))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_images = 48" in refused.value.details()
    assert predict(few, electrons, name="other")[0] == grpc.StatusCode.NOT_FOUND
    assert predict(few, electrons, version=7)[0] == grpc.StatusCode.NOT_FOUND


def test_requests_over_the_bound_are_refused_and_the_server_goes_on(served):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from hagg_tf.export.serving import ModelServers

    bound = 4096
    with ModelServers(served, host=HOST, rest_port=0, grpc_port=0,
                      max_request_bytes=bound) as small:
        body = json.dumps({"instances": [_counts_instance(side=16)]}).encode()
        assert len(body) > bound
        status, answer = _rest(small, f"/v1/models/{MODEL}:predict", body=body)
        assert status == 413 and "4096 bytes" in answer["error"], answer
        # a client that asks first (Expect: 100-continue, as curl does) is refused before it
        # sends the body; one without a Content-Length gets 411
        connection = http.client.HTTPConnection(HOST, small.rest_port, timeout=30)
        connection.putrequest("POST", f"/v1/models/{MODEL}:predict")
        connection.putheader("Content-Length", str(10 ** 9))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and b"1000000000 bytes" in response.read()
        connection.close()
        connection = http.client.HTTPConnection(HOST, small.rest_port, timeout=30)
        connection.putrequest("POST", f"/v1/models/{MODEL}:predict")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 411 and b"Content-Length" in response.read()
        connection.close()
        assert _rest(small, f"/v1/models/{MODEL}")[0] == 200  # still serving

        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.ones((1, 12, 16, 16),
                                                                       np.float32)))
        with grpc.insecure_channel(small.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_busy_port_is_one_clear_error_and_leaves_nothing_running(served):
    from hagg_tf.export.serving import ModelServers

    threads_before = threading.active_count()
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        busy = holder.getsockname()[1]
        for ports, api in (({"rest_port": busy, "grpc_port": None}, "REST"),
                           ({"rest_port": 0, "grpc_port": busy}, "gRPC")):
            with pytest.raises(OSError, match=f"{api} port {busy}: Address already in use"):
                ModelServers(served, host=HOST, **ports)
    assert threading.active_count() == threads_before  # the REST server started first is shut
    with pytest.raises(ValueError, match="nothing to serve"):
        ModelServers(served, host=HOST, rest_port=None, grpc_port=None)


def test_keep_alive_connection_survives_a_refusal(servers):
    connection = http.client.HTTPConnection(HOST, servers.rest_port, timeout=30)
    connection.request("POST", f"/v1/models/{MODEL}:predict", body=b"[1]",
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 400 and b"JSON object" in response.read()
    connection.request("GET", f"/v1/models/{MODEL}")  # the same connection, the next request
    response = connection.getresponse()
    assert response.status == 200 and b"AVAILABLE" in response.read()
    connection.close()


def test_default_bound_fits_twelve_images_as_json_floats(served):
    from hagg_tf.export.serving import JSON_BYTES_PER_VALUE

    values = np.float32([0.1, 1 / 3, -2.7182817, -1.17549435e-38, -3.4028235e38, 65535.0])
    longest = max(len(json.dumps(value)) + len(", ") for value in values.tolist())
    assert longest <= JSON_BYTES_PER_VALUE
    assert served.default_max_request_bytes() >= 12 * 512 * 512 * longest
    assert served.max_images == 48 and served.num_images == 12


# --- the command ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _tree(folder: pathlib.Path) -> dict:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("arguments, fragment", [
    (["--rest_port=0", "--grpc_port=0"], "nothing to serve"),
    (["--rest_port=9000", "--grpc_port=9000"], "different ports"),
    (["--max_images=5"], "below nu = 12"),
    (["--model=/nonexistent/models"], "no characterize SavedModel"),
    (["--rest_port=70000"], "--rest_port"),
])
def test_hagg_serve_refuses_bad_flags_in_one_line(arguments, fragment):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "serve.py"), *arguments],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


@pytest.mark.slow
def test_hagg_serve_serves_stops_on_sigterm_and_writes_only_its_log(tmp_path):
    home, cwd, scratch, log = (tmp_path / name for name in ("home", "cwd", "tmp", "log"))
    for folder in (home, cwd, scratch):
        folder.mkdir()
    models_before = _tree(SHIPPED)
    env = dict(os.environ, HOME=str(home), TMPDIR=str(scratch), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(REPO))
    env.pop("HAGG_TF_MODELS", None)
    rest_port, grpc_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "serve.py"), f"--rest_port={rest_port}",
         f"--grpc_port={grpc_port}", f"--output={log}"], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while not any(line.startswith("Ctrl-C") for line in lines):
            line = process.stdout.readline()
            assert line and time.monotonic() < deadline, (lines, process.stderr.read())
            lines.append(line)
        assert f"REST API: http://{HOST}:{rest_port}/v1/models/{MODEL}\n" in lines, lines
        assert f"gRPC API: {HOST}:{grpc_port} (" in "".join(lines)
        url = f"http://{HOST}:{rest_port}/v1/models/{MODEL}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + ":predict", data=b"{}"),
                                   timeout=30)
        assert refused.value.code == 400
        with grpc.insecure_channel(f"{HOST}:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stdout.strip().endswith("stopped") and "Traceback" not in stderr
    assert list(cwd.iterdir()) == [] and list(scratch.iterdir()) == []
    assert [path.name for path in log.iterdir()] == ["hagg-serve.log"]
    logged = (log / "hagg-serve.log").read_text()
    assert f'"GET /v1/models/{MODEL} HTTP/1.1" 200' in logged
    assert f'"POST /v1/models/{MODEL}:predict HTTP/1.1" 400' in logged
    assert _tree(SHIPPED) == models_before
    # TensorFlow's import writes Keras' and matplotlib's settings into $HOME, as in every tool
    # that imports it; nothing else is written there.
    written = [path.relative_to(home) for path in home.rglob("*") if path.is_file()]
    assert all(path.parts[0] == ".keras" or "matplotlib" in path.parts for path in written), \
        written


def test_response_formats_follow_tf_serving_and_stay_valid_json():
    from hagg_tf.export.serving import predict_json

    outputs = {"theta": np.float32([[1.8, np.nan, 3.0, np.inf]]),
               "wo3_cluster_size": np.int32([3])}
    assert predict_json(outputs, row_format=True) == {
        "predictions": [{"theta": [pytest.approx(1.8), None, 3.0, None],
                         "wo3_cluster_size": 3}]}
    assert predict_json(outputs, row_format=False) == {
        "outputs": {"theta": [[pytest.approx(1.8), None, 3.0, None]], "wo3_cluster_size": [3]}}
    single = {"theta": np.float32([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])}
    assert predict_json(single, row_format=True) == {  # one output: its values stand alone
        "predictions": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]}
    assert predict_json(single, row_format=False) == {"outputs": single["theta"].tolist()}
    json.dumps(predict_json(outputs, row_format=True), allow_nan=False)
