#!/usr/bin/env python3
"""Per-action server timelines of the last remote build of benches/bazel.sh,
from each server's ExecutedActionMetadata (run it with BuildGrid's venv
Python, as peers.py):

    bazel_timelines.py STATE_DIR NAME=127.0.0.1:PORT ...

The action digests are the entries of our action cache (STATE_DIR/ac/shared;
the same Actions go to every server: one workspace, relative paths, no
platform properties), their sizes those of the Action blobs in our CAS.
Each server is asked GetActionResult for each, and its metadata split into
  queue    queued -> worker_start
  prep     worker_start -> input_fetch_start
  inputs   input_fetch_start -> input_fetch_completed
  run      execution_start -> execution_completed
  outputs  output_upload_start -> output_upload_completed
  total    queued -> worker_completed
and, from our own nativelink_lre.v1.ResourceUsage (auxiliary_metadata), the
execution split into spawn (sandbox_setup: helper spawned -> command
exec'd), command (exec -> the sandbox's init exited) and cpu (the action
cgroup's CPU time).
Prints one JSON line per server and action, then one per server with the
sums ("action": "ALL"). A server that has no entry for an action is
reported as such. Nothing is asserted on timings.
"""

import json
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import re_grpc, re_pb2  # noqa: E402


def ts(t):
    return t.seconds + t.nanos / 1e9


def action_digests(state):
    sizes = {}
    for top, _, names in os.walk(os.path.join(state, "cas")):
        for n in names:
            if len(n) == 64:
                sizes[n] = os.path.getsize(os.path.join(top, n))
    out = []
    for top, _, names in os.walk(os.path.join(state, "ac", "shared")):
        for n in names:
            if n in sizes:
                out.append(re_pb2.Digest(hash=n, size_bytes=sizes[n]))
    return out


def label(cas, digest):
    """The command's first output path (or argv[0]), to name the action."""
    try:
        def read(d):
            r = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(instance_name="", digests=[d]))
            return r.responses[0].data
        action = re_pb2.Action.FromString(read(digest))
        command = re_pb2.Command.FromString(read(action.command_digest))
        outs = list(command.output_paths) or list(command.output_files)
        return os.path.basename(outs[0]) if outs else command.arguments[0]
    except Exception:  # the label is only a name; the digest is kept anyway
        return digest.hash[:12]


def varints(b):
    """The varint fields of a message (enough for ResourceUsage's numbers)."""
    i, out = 0, {}
    while i < len(b):
        k, i = _varint(b, i)
        f, t = k >> 3, k & 7
        if t == 0:
            out[f], i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            i += n
        elif t in (1, 5):
            i += 8 if t == 1 else 4
        else:
            break
    return out


def _varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def main():
    state, servers = sys.argv[1], [s.split("=", 1) for s in sys.argv[2:]]
    digests = action_digests(state)
    names = None
    for name, address in servers:
        ch = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        ac = re_grpc.ActionCacheStub(ch)
        if names is None:
            cas = re_grpc.ContentAddressableStorageStub(ch)
            names = {d.hash: label(cas, d) for d in digests}
        sums = {}
        for d in digests:
            row = {"server": name, "action": names[d.hash], "digest": d.hash[:12]}
            try:
                r = ac.GetActionResult(re_pb2.GetActionResultRequest(instance_name="", action_digest=d))
            except grpc.RpcError as e:
                row["error"] = e.code().name
                print(json.dumps(row))
                continue
            m = r.execution_metadata
            phases = {
                "queue": (m.queued_timestamp, m.worker_start_timestamp),
                "prep": (m.worker_start_timestamp, m.input_fetch_start_timestamp),
                "inputs": (m.input_fetch_start_timestamp, m.input_fetch_completed_timestamp),
                "run": (m.execution_start_timestamp, m.execution_completed_timestamp),
                "outputs": (m.output_upload_start_timestamp, m.output_upload_completed_timestamp),
                "total": (m.queued_timestamp, m.worker_completed_timestamp),
            }
            for k, (a, b) in phases.items():
                v = round((ts(b) - ts(a)) * 1000.0, 2) if ts(a) and ts(b) else None
                row[k + "_ms"] = v
                if v is not None:
                    sums[k + "_ms"] = round(sums.get(k + "_ms", 0) + v, 2)
            for aux in m.auxiliary_metadata:
                if aux.type_url.endswith("ResourceUsage"):
                    u = varints(aux.value)
                    for k, f in (("spawn_ms", 8), ("command_ms", 9), ("cpu_ms", 1)):
                        if f in u:
                            row[k] = round(u[f] / 1000.0, 2)
                            sums[k] = round(sums.get(k, 0) + row[k], 2)
            print(json.dumps(row))
        print(json.dumps({"server": name, "action": "ALL", "actions": len(digests), **sums}))


if __name__ == "__main__":
    main()
