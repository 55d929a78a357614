"""Serve the characterize model behind TF Serving's REST and gRPC APIs.

Examples:
  hagg-serve                                    # shipped model, REST :8501, gRPC :8500
  hagg-serve --model=work/saved_models --rest_port=8080 --grpc_port=0 --output=work/serve
  curl http://127.0.0.1:8501/v1/models/characterize/metadata

The composite SavedModel (all five networks and the estimators; default: the shipped
saved_models/, $HAGG_TF_MODELS overrides) is served as TF Serving serves it, so TF Serving's
clients work unchanged: REST GET /v1/models/characterize[/versions/N][/metadata] and POST
/v1/models/characterize:predict with "instances" (row format, one object per sample) or
"inputs" (columnar), answered by "predictions" or "outputs"; gRPC
tensorflow.serving.PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus). A sample is n >= nu = 12 images prepared to the networks' 512x512 px at
1.2 nm/px with their electrons per pixel (docs/serving.md). Bad payloads get HTTP 400 (gRPC
INVALID_ARGUMENT) with a message; larger ones than --max_request_bytes, 413.

Listens on 127.0.0.1 (this machine only) unless --host says otherwise; there is no
authentication and no TLS. Writes nothing but its request log, to --output/hagg-serve.log when
given (else stderr). Runs until Ctrl-C or SIGTERM. Bad flags: one 'error:' line, exit status 2.
"""
from __future__ import annotations

import ipaddress
import logging
import signal
import sys
import threading

from absl import flags

from hagg_tf.cli import check_output_dir, fail, reject_extra_arguments, run_tool

#: File of the request log inside --output.
LOG_FILENAME = "hagg-serve.log"

_MODEL = flags.DEFINE_string(
    "model", None, "Composite SavedModel (export base, model or version directory); default: "
    "the shipped saved_models/ ($HAGG_TF_MODELS overrides).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on: 127.0.0.1 or ::1 "
                            "(this machine only), 0.0.0.0 or :: (every network: anyone who "
                            "reaches the port can run the model).")
_REST_PORT = flags.DEFINE_integer("rest_port", 8501, "Port of the REST API (TF Serving's "
                                  "8501); 0: no REST API.", lower_bound=0, upper_bound=65535)
_GRPC_PORT = flags.DEFINE_integer("grpc_port", 8500, "Port of the gRPC API (TF Serving's "
                                  "8500); 0: no gRPC API.", lower_bound=0, upper_bound=65535)
_MAX_REQUEST_BYTES = flags.DEFINE_integer(
    "max_request_bytes", None, "Largest request (REST body or gRPC message), bytes; default: "
    "nu images of the model's size as JSON numbers (about 76 MiB for 12 x 512^2).",
    lower_bound=1024)
_MAX_IMAGES = flags.DEFINE_integer(
    "max_images", None, "Most images in one request (all its samples); default 4 x nu (48). "
    "Bounds the memory of one prediction.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, f"Folder for the request log ({LOG_FILENAME}); "
                              "default: the log goes to stderr.")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _log_to(output, logger_name: str) -> None:
    logger = logging.getLogger(logger_name)
    handler = (logging.FileHandler(output / LOG_FILENAME, encoding="utf-8") if output
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not through absl's handler a second time


def main(argv):
    reject_extra_arguments(argv)
    host = _HOST.value.strip().strip("[]")
    if not host:
        fail("--host must name an address, e.g. 127.0.0.1")
    rest_port, grpc_port = _REST_PORT.value, _GRPC_PORT.value
    if not rest_port and not grpc_port:
        fail("--rest_port and --grpc_port are both 0: nothing to serve")
    if rest_port and rest_port == grpc_port:
        fail(f"--rest_port and --grpc_port are both {rest_port}: give them different ports")
    output = check_output_dir(_OUTPUT.value) if _OUTPUT.value else None

    from hagg_tf.estimation.model import find_model

    try:
        version_dir, metadata = find_model(_MODEL.value)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error).replace("--models (hagg-evaluate: --model)", "--model"))
    num_images = int(metadata["num_images"])
    if _MAX_IMAGES.value is not None and _MAX_IMAGES.value < num_images:
        fail(f"--max_images={_MAX_IMAGES.value} is below nu = {num_images}, the least images "
             "of one sample")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)

    from hagg_tf.export.serving import LOGGER_NAME, ModelServers, ServedModel

    _log_to(output, LOGGER_NAME)

    served = ServedModel(version_dir, max_images=_MAX_IMAGES.value)
    try:
        servers = ModelServers(served, host=host, rest_port=rest_port or None,
                               grpc_port=grpc_port or None,
                               max_request_bytes=_MAX_REQUEST_BYTES.value)
    except OSError as error:
        fail(f"cannot listen on {host}, {error.strerror or error} (see --host, --rest_port, "
             "--grpc_port)")
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    print(f"serving {served.name!r} version {served.version} ({version_dir}); signatures "
          f"{', '.join(served.predict_signatures())}; {served.num_images} to "
          f"{served.max_images} images per request, at most {servers.max_request_bytes} bytes")
    if servers.rest_url:
        print(f"REST API: {servers.rest_url}/v1/models/{served.name}")
    if servers.grpc_target:
        print(f"gRPC API: {servers.grpc_target} (tensorflow.serving.PredictionService, "
              "ModelService)")
    if not _is_loopback(host):
        print(f"warning: listening on {host}, not loopback: anyone who reaches these ports can "
              "run the model (no authentication, no TLS)", file=sys.stderr)
    print("Ctrl-C or SIGTERM stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        servers.close()
    print("stopped", flush=True)
    return 0


def run():
    """Console-script entry point ``hagg-serve``."""
    run_tool(main)


if __name__ == "__main__":
    run()
