"""Latency of hagg-serve per request over loopback: REST (JSON) and gRPC, 12 images of 512².

Starts ``tools/serve.py`` as its own process on 127.0.0.1 (free ports), sends the shipped
example's 12 prepared images as one sample, and prints one JSON line per way of calling it:

* ``rest_float32_rows``: ``POST :predict`` with ``instances`` (float32 counts as JSON numbers);
* ``rest_uint16_columns``: ``inputs`` to ``serving_uint16`` (integer counts, shorter JSON);
* ``grpc_float32`` / ``grpc_uint16``: ``PredictionServiceStub.Predict`` with TensorProtos.

Each line has the median, min and max wall time of ``--requests`` requests (the body or
TensorProto encoded once beforehand; ``encode_s`` says what encoding costs the client), the
server's CPU time (user + sys) per request, the request size, and the load average, since timings
on a shared machine are inflated by other work.

  python benchmarks/bench_serving.py --requests=20
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
_REQUESTS = flags.DEFINE_integer("requests", 20, "Requests per way of calling.", lower_bound=1)
_EXAMPLE = flags.DEFINE_string("example", str(REPO / "examples" / "sample_a"),
                               "Folder of one sample's images.")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(name, call, pid, size, encode_s, requests):
    call()  # warm: the first call of a signature traces and optimises its graph
    times, cpu_before = [], _cpu_seconds(pid)
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    server_cpu = (_cpu_seconds(pid) - cpu_before) / requests
    print(json.dumps({"way": name, "requests": requests,
                      "median_s": round(statistics.median(times), 3),
                      "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                      "server_cpu_s_per_request": round(server_cpu, 3),
                      "request_bytes": size, "encode_s": round(encode_s, 3),
                      "loadavg": [round(value, 2) for value in os.getloadavg()]}), flush=True)


def main(argv):
    del argv
    from hagg_tf.estimation import find_image_files, find_model, load_stem_images
    from hagg_tf.estimation.images import prepare_images

    _, metadata = find_model(None)
    paths, _ = find_image_files([_EXAMPLE.value])
    images, _ = load_stem_images(paths)
    prepared, _ = prepare_images(images, int(metadata["image_size"]),
                                 metadata.get("pixel_size_nm"))
    counts, electrons = prepared.counts[np.newaxis], prepared.electrons_per_pixel[np.newaxis]

    rest_port, grpc_port = _free_port(), _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "tools" / "serve.py"),
                               f"--rest_port={rest_port}", f"--grpc_port={grpc_port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in server.stdout:
            if line.startswith("Ctrl-C"):
                break
        else:
            raise SystemExit("hagg-serve did not start")
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        url = f"http://127.0.0.1:{rest_port}/v1/models/characterize:predict"

        def rest(body):
            def call():
                request = urllib.request.Request(url, data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=600) as response:
                    answer = json.loads(response.read())
                assert "predictions" in answer or "outputs" in answer, answer
            return call

        started = time.perf_counter()
        rows = json.dumps({"instances": [{"images": counts[0].tolist(),
                                          "electrons_per_pixel": electrons[0].tolist()}]}
                          ).encode()
        encode_rows = time.perf_counter() - started
        started = time.perf_counter()
        columns = json.dumps({"signature_name": "serving_uint16", "inputs": {
            "images": counts.astype(np.uint16).tolist(),
            "electrons_per_pixel": electrons.tolist()}}).encode()
        encode_columns = time.perf_counter() - started
        _measure("rest_float32_rows", rest(rows), server.pid, len(rows), encode_rows,
                 _REQUESTS.value)
        _measure("rest_uint16_columns", rest(columns), server.pid, len(columns),
                 encode_columns, _REQUESTS.value)

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for dtype, signature in ((np.float32, "serving_default"),
                                     (np.uint16, "serving_uint16")):
                started = time.perf_counter()
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "characterize"
                request.model_spec.signature_name = signature
                request.inputs["images"].CopyFrom(tf.make_tensor_proto(counts.astype(dtype)))
                request.inputs["electrons_per_pixel"].CopyFrom(tf.make_tensor_proto(electrons))
                encode = time.perf_counter() - started
                _measure(f"grpc_{np.dtype(dtype).name}",
                         lambda request=request: stub.Predict(request, timeout=600),
                         server.pid, request.ByteSize(), encode, _REQUESTS.value)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    app.run(main)
