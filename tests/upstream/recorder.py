#!/usr/bin/env python3
"""A REAPI server that records what it is sent: for the upstream tests that
check the request metadata (authorization and other configured headers) our
daemon attaches to its calls to an upstream.

    recorder.py [--tls-dir DIR [--tls-client-ca FILE]] PORT LOGFILE

Run it with the BuildGrid venv's python (`tests/upstream/buildgrid.sh python`);
it uses grpcio and BuildGrid's generated stubs, like bg_client.py.

Listens on 127.0.0.1:PORT (PORT 0: a free port, printed as `READY PORT`;
otherwise it prints `READY`) once it serves. SIGTERM or SIGINT stops it
(exit 0). With --tls-dir it serves TLS with DIR/server.pem + DIR/server.key
(a certs.sh directory), and with --tls-client-ca also requires a client
certificate signed by FILE.

Every call, answered or not, appends one JSON line to LOGFILE *before* the
answer is sent (a client that has its answer can read its line at once):

    {"method": "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
     "metadata": {"authorization": "Bearer ...", "user-agent": "...", ...},
     "instance_name": "...", "request": {...proto3 JSON...}, "peer": "ipv4:..."}

metadata: all invocation metadata, keys lowercase (gRPC makes them so); a key
sent more than once maps to a list of its values; `-bin` values are base64.
HTTP/2 pseudo-headers (:authority, :path) are not part of it. instance_name
and request are null for a method this server does not implement.

Answers:
  Capabilities.GetCapabilities   SHA256, action cache updates enabled,
                                 max_batch_total_size_bytes 4 MiB, API 2.0-2.2,
                                 no execution
  ActionCache.GetActionResult    always NOT_FOUND
  ContentAddressableStorage.FindMissingBlobs  every digest is missing
  ContentAddressableStorage.BatchReadBlobs    every blob NOT_FOUND (per blob;
                                 the call itself succeeds)
  anything else (UpdateActionResult, BatchUpdateBlobs, ByteStream, Execute)
                                 UNIMPLEMENTED (and logged)
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import json_format

from buildgrid._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)
from buildgrid._protos.build.bazel.semver import semver_pb2

REAPI = "/build.bazel.remote.execution.v2."
MAX_BATCH = 4 << 20
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


class Log:
    """One JSON line per call, each written by a single O_APPEND write."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()

    def write(self, method, metadata, request, peer, in_flight=None):
        record = {
            "in_flight": in_flight,
            "method": method,
            "metadata": metadata_dict(metadata),
            "instance_name": getattr(request, "instance_name", None),
            "request": (
                json_format.MessageToDict(request, preserving_proto_field_name=True)
                if request is not None
                else None
            ),
            "peer": peer,
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)


def metadata_dict(metadata):
    out = {}
    for key, value in metadata or ():
        key = key.lower()
        if isinstance(value, bytes):  # `-bin` keys
            value = base64.b64encode(value).decode()
        if key in out:
            if not isinstance(out[key], list):
                out[key] = [out[key]]
            out[key].append(value)
        else:
            out[key] = value
    return out


def get_capabilities(request, context):
    return re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA256],
            action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(
                update_enabled=True
            ),
            max_batch_total_size_bytes=MAX_BATCH,
            symlink_absolute_path_strategy=re_pb2.SymlinkAbsolutePathStrategy.DISALLOWED,
        ),
        low_api_version=semver_pb2.SemVer(major=2, minor=0),
        high_api_version=semver_pb2.SemVer(major=2, minor=2),
    )


def get_action_result(request, context):
    context.abort(
        grpc.StatusCode.NOT_FOUND,
        f"recorder: no action result for {request.action_digest.hash}/"
        f"{request.action_digest.size_bytes}",
    )


def find_missing_blobs(request, context):
    return re_pb2.FindMissingBlobsResponse(missing_blob_digests=request.blob_digests)


def batch_read_blobs(request, context):
    resp = re_pb2.BatchReadBlobsResponse()
    for d in request.digests:
        r = resp.responses.add()
        r.digest.CopyFrom(d)
        r.status.code = NOT_FOUND
        r.status.message = "recorder: not found"
    return resp


METHODS = {
    REAPI + "Capabilities/GetCapabilities":
        (re_pb2.GetCapabilitiesRequest, get_capabilities),
    REAPI + "ActionCache/GetActionResult":
        (re_pb2.GetActionResultRequest, get_action_result),
    REAPI + "ContentAddressableStorage/FindMissingBlobs":
        (re_pb2.FindMissingBlobsRequest, find_missing_blobs),
    REAPI + "ContentAddressableStorage/BatchReadBlobs":
        (re_pb2.BatchReadBlobsRequest, batch_read_blobs),
}


class Handler(grpc.GenericRpcHandler):
    def __init__(self, log, delay):
        self.log = log
        # --delay: each answer waits this long, so that calls overlap and
        # "in_flight" (calls being handled when this one arrived, itself
        # included) shows how many a client keeps open at once.
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0

    def service(self, details):
        entry = METHODS.get(details.method)
        if entry is None:
            # Unknown: log it; returning None makes grpc answer UNIMPLEMENTED.
            self.log.write(details.method, details.invocation_metadata, None, None)
            return None
        req_type, fn = entry
        method = details.method

        def behavior(request, context):
            with self.lock:
                self.in_flight += 1
                now = self.in_flight
            try:
                self.log.write(method, context.invocation_metadata(), request,
                               context.peer(), now)
                if self.delay:
                    time.sleep(self.delay)
                return fn(request, context)
            finally:
                with self.lock:
                    self.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=req_type.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main(argv):
    p = argparse.ArgumentParser(
        prog="recorder.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tls-dir", metavar="DIR",
                   help="serve TLS with DIR/server.pem and DIR/server.key")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates signed by this CA (with --tls-dir)")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long before each answer")
    p.add_argument("port", type=int)
    p.add_argument("logfile")
    args = p.parse_args(argv)
    if args.tls_client_ca and not args.tls_dir:
        p.error("--tls-client-ca needs --tls-dir")

    log = Log(args.logfile)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        handlers=[Handler(log, args.delay)],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 64 << 20),
        ],
    )
    address = f"127.0.0.1:{args.port}"
    if args.tls_dir:
        creds = grpc.ssl_server_credentials(
            [(read(os.path.join(args.tls_dir, "server.key")),
              read(os.path.join(args.tls_dir, "server.pem")))],
            root_certificates=read(args.tls_client_ca) if args.tls_client_ca else None,
            require_client_auth=bool(args.tls_client_ca),
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if not port:
        print(f"recorder: cannot listen on {address}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print("READY" if args.port else f"READY {port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
