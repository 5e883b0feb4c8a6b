#!/usr/bin/env python3
"""A minimal REAPI v2 client for the NixOS VM test (nix/vm-test.nix).

nativelink-lre has no client subcommand, so this script plays a build tool:
it uploads a Command and an Action to the CAS, calls Execution.Execute, and
prints the ActionResult (with stdout, stderr and output files read back from
the CAS) as one JSON object.

Its only dependency is grpcio, used for the transport with raw bytes; the few
protobuf messages it needs are encoded and decoded by hand below, from the
field numbers in proto/build/bazel/remote/execution/v2/remote_execution.proto.

    vm-client.py [--target grpc-target] capabilities
    vm-client.py [--target grpc-target] run [--output PATH]... [--env K=V]...
                 [--platform K=V]... [--timeout SECONDS] -- ARGV...

The target is a gRPC target such as 127.0.0.1:50051 or
unix:///run/nativelink-lre/socket.
"""

import argparse
import hashlib
import json
import sys

import grpc

REAPI = "/build.bazel.remote.execution.v2."

# --- protobuf wire format --------------------------------------------------


def _varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire_type):
    return _varint(field << 3 | wire_type)


def f_int(field, n):
    return _key(field, 0) + _varint(n) if n else b""


def f_bool(field, b):
    return f_int(field, 1 if b else 0)


def f_bytes(field, data):
    return _key(field, 2) + _varint(len(data)) + data


def f_str(field, s):
    return f_bytes(field, s.encode()) if s else b""


def f_msg(field, encoded):
    return f_bytes(field, encoded)


def decode(buf):
    """Returns {field: [values]}: ints for varints, bytes for the rest."""
    fields = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _read_varint(buf, i)
        elif wire_type == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire_type == 2:
            length, i = _read_varint(buf, i)
            value, i = bytes(buf[i:i + length]), i + length
        elif wire_type == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.setdefault(field, []).append(value)
    return fields


def _read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def first(fields, field, default=None):
    values = fields.get(field)
    return values[0] if values else default


def as_int32(n):
    n &= (1 << 64) - 1
    if n >= 1 << 63:
        n -= 1 << 64
    return n


# --- REAPI messages ---------------------------------------------------------


def digest_of(data):
    return hashlib.sha256(data).hexdigest(), len(data)


def enc_digest(d):
    return f_str(1, d[0]) + f_int(2, d[1])


def dec_digest(raw):
    f = decode(raw)
    return first(f, 1, b"").decode(), first(f, 2, 0)


def dec_status(raw):
    if raw is None:
        return {"code": 0, "message": ""}
    f = decode(raw)
    return {"code": as_int32(first(f, 1, 0)), "message": first(f, 2, b"").decode()}


def enc_command(argv, env, outputs, platform):
    out = b"".join(f_str(1, a) for a in argv)
    for name in sorted(env):
        out += f_msg(2, f_str(1, name) + f_str(2, env[name]))
    out += b"".join(f_str(7, p) for p in sorted(outputs))
    if platform:
        out += f_msg(5, enc_platform(platform))
    return out


def enc_platform(props):
    return b"".join(
        f_msg(1, f_str(1, k) + f_str(2, v)) for k, v in sorted(props.items())
    )


def enc_action(command_digest, root_digest, timeout, platform):
    out = f_msg(1, enc_digest(command_digest)) + f_msg(2, enc_digest(root_digest))
    if timeout:
        out += f_msg(6, f_int(1, timeout))
    out += f_bool(7, True)  # do_not_cache: every run of the test executes
    if platform:
        out += f_msg(10, enc_platform(platform))
    return out


# --- calls ------------------------------------------------------------------


class Client:
    def __init__(self, target):
        self.channel = grpc.insecure_channel(target)

    def unary(self, method, request):
        call = self.channel.unary_unary(method)  # bytes in, bytes out
        return call(request, timeout=120)

    def upload(self, blobs):
        req = b"".join(
            f_msg(2, f_msg(1, enc_digest(digest_of(b))) + f_bytes(2, b))
            for b in blobs
        )
        resp = decode(self.unary(REAPI + "ContentAddressableStorage/BatchUpdateBlobs", req))
        for r in resp.get(1, []):
            status = dec_status(first(decode(r), 2))
            if status["code"] != 0:
                raise RuntimeError(f"BatchUpdateBlobs: {status}")

    def read(self, digest):
        if digest[1] == 0:
            return b""
        req = f_msg(2, enc_digest(digest))
        resp = decode(self.unary(REAPI + "ContentAddressableStorage/BatchReadBlobs", req))
        r = decode(first(resp, 1))
        status = dec_status(first(r, 3))
        if status["code"] != 0:
            raise RuntimeError(f"BatchReadBlobs {digest}: {status}")
        return first(r, 2, b"")

    def capabilities(self):
        caps = decode(self.unary(REAPI + "Capabilities/GetCapabilities", b""))
        execution = decode(first(caps, 2, b""))
        return {"exec_enabled": bool(first(execution, 2, 0))}

    def execute(self, action_digest):
        call = self.channel.unary_stream(REAPI + "Execution/Execute")
        req = f_bool(3, True) + f_msg(6, enc_digest(action_digest))
        last = None
        for raw in call(req, timeout=600):
            last = decode(raw)
        if last is None or not first(last, 3, 0):
            raise RuntimeError("Execute ended without a finished operation")
        if first(last, 4) is not None:
            return {"operation_error": dec_status(first(last, 4))}
        any_msg = decode(first(last, 5))
        return self.execute_response(decode(first(any_msg, 2, b"")))

    def execute_response(self, resp):
        out = {
            "status": dec_status(first(resp, 3)),
            "cached_result": bool(first(resp, 2, 0)),
            "message": first(resp, 5, b"").decode(),
        }
        result = first(resp, 1)
        if result is None:
            return out
        r = decode(result)
        out["exit_code"] = as_int32(first(r, 4, 0))
        for name, raw_field, digest_field in (("stdout", 5, 6), ("stderr", 7, 8)):
            data = first(r, raw_field)
            if data is None and first(r, digest_field) is not None:
                data = self.read(dec_digest(first(r, digest_field)))
            out[name] = (data or b"").decode(errors="replace")
        files = {}
        for raw in r.get(2, []):
            f = decode(raw)
            path = first(f, 1, b"").decode()
            data = first(f, 5)
            if data is None:
                data = self.read(dec_digest(first(f, 2)))
            files[path] = data.decode(errors="replace")
        out["output_files"] = files
        meta = decode(first(r, 9, b""))
        out["worker"] = first(meta, 1, b"").decode()
        for aux in meta.get(11, []):
            a = decode(aux)
            if first(a, 1, b"").decode().endswith("nativelink_lre.v1.ResourceUsage"):
                u = decode(first(a, 2, b""))
                out["resource_usage"] = {
                    "cpu_usage_usec": first(u, 1, 0),
                    "memory_peak_bytes": first(u, 4),
                    "oom_kills": first(u, 5),
                    "pids_max_events": first(u, 6),
                    "source": first(u, 7, b"").decode(),
                }
        return out


def key_values(items):
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:50051")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("capabilities")
    run = sub.add_parser("run")
    run.add_argument("--output", action="append", default=[])
    run.add_argument("--env", action="append", default=[])
    run.add_argument("--platform", action="append", default=[])
    run.add_argument("--timeout", type=int, default=0)
    run.add_argument("argv", nargs="+")
    args = p.parse_args()

    client = Client(args.target)
    if args.cmd == "capabilities":
        print(json.dumps(client.capabilities()))
        return
    platform = key_values(args.platform)
    command = enc_command(args.argv, key_values(args.env), args.output, platform)
    empty_dir = b""  # an empty Directory message: the input root
    action = enc_action(digest_of(command), digest_of(empty_dir), args.timeout, platform)
    client.upload([command, action])
    print(json.dumps(client.execute(digest_of(action)), sort_keys=True))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(f"vm-client: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(1)
