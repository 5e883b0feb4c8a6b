#!/usr/bin/env python3
"""The cache figures of issue 17, measured with one Python REAPI client
(grpcio and BuildGrid's generated stubs, so that what it sends is what a
third-party client sends) against any server: ours, NativeLink, BuildGrid.

    peers.py NAME ADDRESS [--execute] [--rounds N]

ADDRESS is 127.0.0.1:PORT (plain gRPC over TCP; every server is measured
over the same transport). Prints one JSON object per line:
{"server": NAME, "figure": ..., "p50_ms": ..., ...}. benches/peers.sh runs
it against every server and makes the table of docs/PERFORMANCE.md.

Figures (each after warm-up calls):
  capabilities      GetCapabilities: the round-trip floor
  ac_hit            GetActionResult of a stored result whose output is present
  execute_hit       Execute of that action, answered from the cache (--execute)
  find_missing      FindMissingBlobs of 10,000 digests, half present
  batch_update      BatchUpdateBlobs of 1000 new blobs of 1 KiB
Nothing is asserted on timings; answers are checked (a wrong answer is an
error, exit 1).
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

import grpc

from buildgrid._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
    remote_execution_pb2_grpc as re_grpc,
)


def digest_of(data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def timed(n, call):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000.0)
    return times


def report(server, figure, times, **extra):
    s = sorted(times)
    row = {
        "server": server,
        "figure": figure,
        "calls": len(s),
        "p50_ms": round(statistics.median(s), 4),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 4),
        "min_ms": round(s[0], 4),
    }
    row.update(extra)
    print(json.dumps(row), flush=True)


def upload(cas, blobs):
    req = re_pb2.BatchUpdateBlobsRequest(
        instance_name="",
        requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(b), data=b)
            for b in blobs
        ],
    )
    resp = cas.BatchUpdateBlobs(req)
    for r in resp.responses:
        if r.status.code != 0:
            raise SystemExit(f"peers.py: BatchUpdateBlobs: {r.status.code} {r.status.message}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("address")
    ap.add_argument("--execute", action="store_true", help="also Execute answered from the cache")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each figure")
    args = ap.parse_args()
    ch = grpc.insecure_channel(
        args.address,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    grpc.channel_ready_future(ch).result(timeout=30)
    cas = re_grpc.ContentAddressableStorageStub(ch)
    ac = re_grpc.ActionCacheStub(ch)
    caps = re_grpc.CapabilitiesStub(ch)
    ex = re_grpc.ExecutionStub(ch)
    salt = os.urandom(8).hex().encode()

    # An action whose result is cached, with its output present.
    command = re_pb2.Command(arguments=["/bin/true"], output_paths=["out.txt"])
    cmd_bytes = command.SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    action = re_pb2.Action(
        command_digest=digest_of(cmd_bytes), input_root_digest=digest_of(root)
    )
    act_bytes = action.SerializeToString() + b""
    # A salt in the output keeps runs apart on a server that keeps state.
    out = b"peer bench output " + salt
    upload(cas, [cmd_bytes, root, act_bytes, out])
    act_digest = digest_of(act_bytes)
    ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            instance_name="",
            action_digest=act_digest,
            action_result=re_pb2.ActionResult(
                output_files=[re_pb2.OutputFile(path="out.txt", digest=digest_of(out))],
                exit_code=0,
            ),
        )
    )
    get = re_pb2.GetActionResultRequest(instance_name="", action_digest=act_digest)
    if ac.GetActionResult(get).output_files[0].digest.hash != digest_of(out).hash:
        raise SystemExit("peers.py: GetActionResult returned another result")

    # FindMissingBlobs: 10,000 digests, every other one present.
    present = [b"peer present %d " % i + salt for i in range(5000)]
    for i in range(0, len(present), 1000):
        upload(cas, present[i : i + 1000])
    digests = []
    for i, p in enumerate(present):
        digests.append(digest_of(p))
        digests.append(digest_of(b"peer missing %d " % i + salt))
    fmb = re_pb2.FindMissingBlobsRequest(instance_name="", blob_digests=digests)

    def find_missing():
        r = cas.FindMissingBlobs(fmb)
        if len(r.missing_blob_digests) != 5000:
            raise SystemExit(f"peers.py: FindMissingBlobs said {len(r.missing_blob_digests)} missing, not 5000")

    batch_no = [0]

    def batch_update():
        batch_no[0] += 1
        n = batch_no[0]
        blobs = [(b"%d-%d-" % (n, i) + salt).ljust(1024, b".") for i in range(1000)]
        upload(cas, blobs)

    def execute():
        req = re_pb2.ExecuteRequest(instance_name="", action_digest=act_digest)
        last = None
        for op in ex.Execute(req):
            last = op
        if not (last and last.done):
            raise SystemExit("peers.py: Execute ended without a finished operation")
        resp = re_pb2.ExecuteResponse()
        last.response.Unpack(resp)
        if not resp.cached_result:
            raise SystemExit("peers.py: Execute was not answered from the cache")

    cap_req = re_pb2.GetCapabilitiesRequest(instance_name="")
    figures = [
        ("capabilities", lambda: caps.GetCapabilities(cap_req), 50, 500),
        ("ac_hit", lambda: ac.GetActionResult(get), 50, 500),
        ("find_missing", find_missing, 2, 10),
        ("batch_update", batch_update, 2, 10),
    ]
    if args.execute:
        figures.insert(2, ("execute_hit", execute, 50, 500))
    for name, call, warm, n in figures:
        timed(warm, call)
    results = {name: [] for name, _, _, _ in figures}
    # Rounds alternate between figures so that all see the same load.
    for _ in range(args.rounds):
        for name, call, _, n in figures:
            results[name] += timed(max(1, n // args.rounds), call)
    for name, _, _, _ in figures:
        report(args.name, name, results[name])


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(f"peers.py: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
