#!/usr/bin/env python3
"""A small REAPI v2 client for the upstream tests, built on BuildGrid's own
generated stubs (buildgrid._protos.*), so that what it sends is what a
third-party REAPI implementation generates, not what our own crate does.

Run it with the BuildGrid venv's python (`tests/upstream/buildgrid.sh python`
prints the path).

ADDRESS is `127.0.0.1:PORT` (insecure gRPC over TCP); `unix:/path/sock` also
works; `grpcs://HOST:PORT` is gRPC over TLS, verified against --tls-ca FILE
(default: the system roots), presenting --tls-cert/--tls-key when given
(mutual TLS). The --tls-* options are refused with a plaintext ADDRESS.
--header NAME=VALUE (repeatable) adds request metadata to every call (NAME is
lowercased, as gRPC requires), e.g. --header 'authorization=Bearer T'; the
VALUE of a NAME ending in -bin is base64. The global options go before the
command: `bg_client.py --tls-ca ca.pem capabilities grpcs://127.0.0.1:P ''`.

INSTANCE is the REAPI instance name; pass '' for the empty one. DIGEST is
`HASH/SIZE` (sha256, as everywhere in this project).

Commands (see --help of each):
  seed ADDRESS INSTANCE        upload Command, input root, Action, an output
                               file and stdout, then UpdateActionResult;
                               prints the action digest on line 1 and a JSON
                               object with every digest on line 2
  get-action ADDRESS INSTANCE DIGEST
                               GetActionResult, printed as JSON
  read ADDRESS INSTANCE DIGEST read a blob (ByteStream, or --batch for
                               BatchReadBlobs), print "SHA256 SIZE"
  find-missing ADDRESS INSTANCE DIGEST...
                               print the missing digests, one a line
  put ADDRESS INSTANCE FILE    upload a file's bytes, print its digest
  capabilities ADDRESS INSTANCE
                               GetCapabilities as JSON
  wait-ready ADDRESS INSTANCE SECONDS
                               poll GetCapabilities until it answers

Exit codes: 0 ok; 1 usage or any other error; 2 NOT_FOUND; 3 the server could
not be reached or went away (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED);
4 a blob read back does not match its digest. Errors are printed on stderr
as `bg_client: METHOD: CODE: details`.
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import uuid

import grpc
from google.protobuf import json_format

from buildgrid._protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
    remote_execution_pb2_grpc as re_grpc,
)
from buildgrid._protos.google.bytestream import (
    bytestream_pb2 as bs_pb2,
    bytestream_pb2_grpc as bs_grpc,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2
EXIT_UNAVAILABLE = 3
EXIT_MISMATCH = 4

# Blobs above this go through ByteStream.Write; smaller ones through
# BatchUpdateBlobs. BuildGrid advertises max_batch_total_size_bytes =
# 4 MiB - 1 KiB; keep well under any server's limit.
BATCH_LIMIT = 1 << 20
CHUNK = 64 * 1024

UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


class Failure(Exception):
    def __init__(self, method, code, details):
        super().__init__(f"{method}: {code}: {details}")
        self.code = code


def fail_from_rpc(method, err):
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return Failure(method, code.name if code else "UNKNOWN", details)


def exit_code_for(code_name):
    if code_name == "NOT_FOUND":
        return EXIT_NOT_FOUND
    if code_name in {c.name for c in UNREACHABLE}:
        return EXIT_UNAVAILABLE
    if code_name == "MISMATCH":
        return EXIT_MISMATCH
    return EXIT_ERROR


def parse_digest(text):
    try:
        h, s = text.split("/")
        size = int(s)
    except ValueError:
        raise SystemExit(f"bg_client: bad digest {text!r}, want HASH/SIZE")
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h) or size < 0:
        raise SystemExit(f"bg_client: bad digest {text!r}, want a sha256 HASH/SIZE")
    return re_pb2.Digest(hash=h, size_bytes=size)


def fmt_digest(d):
    return f"{d.hash}/{d.size_bytes}"


def digest_of(data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


# Set by --authority; None means the default below.
AUTHORITY = None
# Set by --tls-ca / --tls-cert / --tls-key / --tls-server-name.
TLS = {"ca": None, "cert": None, "key": None, "server_name": None}
# Set by --header: [(name, value)] sent with every call.
METADATA = []

TLS_PREFIXES = ("grpcs://", "https://")


def is_tls(address):
    return address.startswith(TLS_PREFIXES)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise SystemExit(f"bg_client: cannot read {path}: {err}")


def tls_credentials():
    cert = _read(TLS["cert"]) if TLS["cert"] else None
    key = _read(TLS["key"]) if TLS["key"] else None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(TLS["ca"]) if TLS["ca"] else None,
        private_key=key,
        certificate_chain=cert,
    )


def channel_for(address):
    tls = is_tls(address)
    for prefix in ("grpc://", "http://") + TLS_PREFIXES:
        if address.startswith(prefix):
            address = address[len(prefix):]
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        # Fail fast when the server is gone instead of backing off.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    authority = AUTHORITY
    if authority is None and address.startswith("unix:"):
        # grpc-core sends the socket path as :authority on unix: targets,
        # which an h2/hyper server (ours) answers with RST_STREAM
        # PROTOCOL_ERROR; send what Bazel sends instead. `--authority ''`
        # keeps grpc-core's default (to reproduce that).
        authority = "localhost"
    if authority:
        options.append(("grpc.default_authority", authority))
    if tls:
        if TLS["server_name"]:
            # Verify the server's certificate against this name instead of
            # ADDRESS's host.
            options.append(("grpc.ssl_target_name_override", TLS["server_name"]))
        return grpc.secure_channel(address, tls_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)


def to_json(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class Client:
    def __init__(self, address, instance, timeout):
        self.channel = channel_for(address)
        self.instance = instance
        self.timeout = timeout
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.caps = re_grpc.CapabilitiesStub(self.channel)
        self.bs = bs_grpc.ByteStreamStub(self.channel)

    def _call(self, method, fn, request):
        try:
            return fn(request, timeout=self.timeout, metadata=METADATA or None)
        except grpc.RpcError as err:
            raise fail_from_rpc(method, err)

    # --- CAS -----------------------------------------------------------

    def upload(self, blobs):
        """Uploads a list of bytes; returns their digests in order."""
        digests = [digest_of(b) for b in blobs]
        small = [(d, b) for d, b in zip(digests, blobs) if len(b) <= BATCH_LIMIT]
        large = [(d, b) for d, b in zip(digests, blobs) if len(b) > BATCH_LIMIT]
        # Batch in groups that stay under BATCH_LIMIT in total.
        group, total = [], 0
        for d, b in small + [(None, None)]:
            if d is None or total + len(b) > BATCH_LIMIT:
                if group:
                    self._batch_update(group)
                group, total = [], 0
            if d is not None:
                group.append((d, b))
                total += len(b)
        for d, b in large:
            self.bytestream_write(d, b)
        return digests

    def _batch_update(self, pairs):
        req = re_pb2.BatchUpdateBlobsRequest(
            instance_name=self.instance,
            requests=[
                re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=b) for d, b in pairs
            ],
            digest_function=re_pb2.DigestFunction.SHA256,
        )
        resp = self._call("BatchUpdateBlobs", self.cas.BatchUpdateBlobs, req)
        for r in resp.responses:
            if r.status.code != 0:
                raise Failure(
                    "BatchUpdateBlobs",
                    _code_name(r.status.code),
                    f"{fmt_digest(r.digest)}: {r.status.message}",
                )

    def bytestream_write(self, digest, data):
        prefix = f"{self.instance}/" if self.instance else ""
        name = f"{prefix}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

        def requests():
            off = 0
            first = True
            while True:
                chunk = data[off:off + CHUNK]
                last = off + len(chunk) >= len(data)
                yield bs_pb2.WriteRequest(
                    resource_name=name if first else "",
                    write_offset=off,
                    finish_write=last,
                    data=chunk,
                )
                first = False
                off += len(chunk)
                if last:
                    return

        resp = self._call("ByteStream.Write", self.bs.Write, requests())
        if resp.committed_size != digest.size_bytes:
            raise Failure(
                "ByteStream.Write",
                "UNKNOWN",
                f"committed_size {resp.committed_size} != {digest.size_bytes}",
            )

    def bytestream_read(self, digest):
        prefix = f"{self.instance}/" if self.instance else ""
        name = f"{prefix}blobs/{digest.hash}/{digest.size_bytes}"
        out = bytearray()
        try:
            for resp in self.bs.Read(
                bs_pb2.ReadRequest(resource_name=name),
                timeout=self.timeout,
                metadata=METADATA or None,
            ):
                out += resp.data
        except grpc.RpcError as err:
            raise fail_from_rpc("ByteStream.Read", err)
        return bytes(out)

    def batch_read(self, digest):
        req = re_pb2.BatchReadBlobsRequest(
            instance_name=self.instance,
            digests=[digest],
            digest_function=re_pb2.DigestFunction.SHA256,
        )
        resp = self._call("BatchReadBlobs", self.cas.BatchReadBlobs, req)
        for r in resp.responses:
            if r.status.code != 0:
                raise Failure(
                    "BatchReadBlobs", _code_name(r.status.code), r.status.message
                )
            return r.data
        raise Failure("BatchReadBlobs", "UNKNOWN", "empty response")

    def find_missing(self, digests):
        req = re_pb2.FindMissingBlobsRequest(
            instance_name=self.instance,
            blob_digests=digests,
            digest_function=re_pb2.DigestFunction.SHA256,
        )
        resp = self._call("FindMissingBlobs", self.cas.FindMissingBlobs, req)
        return list(resp.missing_blob_digests)

    # --- ActionCache / Capabilities --------------------------------------

    def get_action_result(self, digest, inline=False):
        req = re_pb2.GetActionResultRequest(
            instance_name=self.instance,
            action_digest=digest,
            inline_stdout=inline,
            inline_stderr=inline,
            digest_function=re_pb2.DigestFunction.SHA256,
        )
        return self._call("GetActionResult", self.ac.GetActionResult, req)

    def update_action_result(self, digest, result):
        req = re_pb2.UpdateActionResultRequest(
            instance_name=self.instance,
            action_digest=digest,
            action_result=result,
            digest_function=re_pb2.DigestFunction.SHA256,
        )
        return self._call("UpdateActionResult", self.ac.UpdateActionResult, req)

    def capabilities(self):
        req = re_pb2.GetCapabilitiesRequest(instance_name=self.instance)
        return self._call("GetCapabilities", self.caps.GetCapabilities, req)


def _code_name(num):
    for c in grpc.StatusCode:
        if c.value[0] == num:
            return c.name
    return f"CODE_{num}"


# --- commands -----------------------------------------------------------


def cmd_seed(args):
    c = Client(args.address, args.instance, args.timeout)
    salt = args.salt
    out_data = f"output of the seeded action ({salt})\n".encode()
    stdout_data = f"stdout of the seeded action ({salt})\n".encode()
    extra = []
    if args.big:
        # Deterministic, incompressible-ish content of the requested size.
        seed = hashlib.sha256(f"big:{salt}".encode()).digest()
        buf = bytearray()
        block = seed
        while len(buf) < args.big:
            block = hashlib.sha256(block).digest()
            buf += block
        extra.append(("big.bin", bytes(buf[: args.big])))

    command = re_pb2.Command(
        arguments=["/bin/sh", "-c", f"echo seeded {salt} > out.txt"],
        output_paths=["out.txt"] + [p for p, _ in extra],
    )
    input_root = re_pb2.Directory()
    command_bytes = command.SerializeToString()
    root_bytes = input_root.SerializeToString()
    command_digest, root_digest = digest_of(command_bytes), digest_of(root_bytes)
    action = re_pb2.Action(
        command_digest=command_digest,
        input_root_digest=root_digest,
        do_not_cache=False,
    )
    action_bytes = action.SerializeToString()

    blobs = [command_bytes, root_bytes, action_bytes, out_data, stdout_data]
    blobs += [b for _, b in extra]
    digests = c.upload(blobs)
    action_digest = digests[2]
    out_digest, stdout_digest = digests[3], digests[4]

    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="out.txt", digest=out_digest)]
        + [
            re_pb2.OutputFile(path=p, digest=d)
            for (p, _), d in zip(extra, digests[5:])
        ],
        exit_code=0,
        stdout_digest=stdout_digest,
    )
    result.execution_metadata.worker = "bg_client seed"
    c.update_action_result(action_digest, result)

    print(fmt_digest(action_digest))
    print(
        json.dumps(
            {
                "action": fmt_digest(action_digest),
                "command": fmt_digest(command_digest),
                "input_root": fmt_digest(root_digest),
                "outputs": {f.path: fmt_digest(f.digest) for f in result.output_files},
                "stdout": fmt_digest(stdout_digest),
            },
            sort_keys=True,
        )
    )
    return EXIT_OK


def cmd_get_action(args):
    c = Client(args.address, args.instance, args.timeout)
    result = c.get_action_result(parse_digest(args.digest), inline=args.inline)
    # Any messages of types BuildGrid's stubs do not know (nativelink-lre's
    # ResourceUsage) cannot go to JSON: list their type URLs instead.
    aux = [a.type_url for a in result.execution_metadata.auxiliary_metadata]
    del result.execution_metadata.auxiliary_metadata[:]
    out = to_json(result)
    if aux:
        out.setdefault("execution_metadata", {})["auxiliary_metadata_types"] = aux
    print(json.dumps(out, sort_keys=True))
    return EXIT_OK


def cmd_read(args):
    c = Client(args.address, args.instance, args.timeout)
    digest = parse_digest(args.digest)
    data = c.batch_read(digest) if args.batch else c.bytestream_read(digest)
    got = digest_of(data)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
    print(f"{got.hash} {got.size_bytes}")
    if got.hash != digest.hash or got.size_bytes != digest.size_bytes:
        print(
            f"bg_client: read: MISMATCH: asked {fmt_digest(digest)}, got {fmt_digest(got)}",
            file=sys.stderr,
        )
        return EXIT_MISMATCH
    return EXIT_OK


def cmd_find_missing(args):
    c = Client(args.address, args.instance, args.timeout)
    for d in c.find_missing([parse_digest(d) for d in args.digests]):
        print(fmt_digest(d))
    return EXIT_OK


def cmd_put(args):
    c = Client(args.address, args.instance, args.timeout)
    with open(args.file, "rb") as f:
        data = f.read()
    (d,) = c.upload([data])
    print(fmt_digest(d))
    return EXIT_OK


def cmd_capabilities(args):
    c = Client(args.address, args.instance, args.timeout)
    print(json.dumps(to_json(c.capabilities()), sort_keys=True))
    return EXIT_OK


def cmd_wait_ready(args):
    deadline = time.monotonic() + args.seconds
    last = None
    while True:
        c = Client(args.address, args.instance, min(args.timeout, 2.0))
        try:
            c.capabilities()
            return EXIT_OK
        except Failure as f:
            last = f
        finally:
            c.channel.close()
        if time.monotonic() >= deadline:
            raise last
        time.sleep(0.2)


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 is NOT_FOUND here, so use 1."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def main(argv):
    p = Parser(
        prog="bg_client.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--timeout", type=float, default=30.0, help="per-RPC deadline, seconds")
    p.add_argument("--authority", default=None,
                   help="HTTP/2 :authority to send (default: grpc's, or localhost "
                        "on unix: addresses; '' for grpc's everywhere)")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="PEM CA certificate(s) to verify a grpcs:// server with "
                        "(default: the system roots)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="PEM client certificate (chain) for mutual TLS; needs --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help="verify the server certificate for NAME, not ADDRESS's host")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="request metadata sent with every call (repeatable)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("address")
        s.add_argument("instance")
        s.set_defaults(fn=fn)
        return s

    s = common("seed", cmd_seed, "upload an Action, its blobs and an ActionResult")
    s.add_argument("--salt", default="0", help="varies every digest (default 0)")
    s.add_argument("--big", type=int, default=0, metavar="BYTES",
                   help="add an output file of BYTES bytes (> 1 MiB goes by ByteStream)")
    s = common("get-action", cmd_get_action, "GetActionResult as JSON")
    s.add_argument("digest")
    s.add_argument("--inline", action="store_true", help="ask for inline stdout/stderr")
    s = common("read", cmd_read, "read a blob, print SHA256 SIZE")
    s.add_argument("digest")
    s.add_argument("--batch", action="store_true", help="use BatchReadBlobs, not ByteStream")
    s.add_argument("--out", help="also write the bytes to this file")
    s = common("find-missing", cmd_find_missing, "FindMissingBlobs")
    s.add_argument("digests", nargs="+")
    s = common("put", cmd_put, "upload a file, print its digest")
    s.add_argument("file")
    common("capabilities", cmd_capabilities, "GetCapabilities as JSON")
    s = common("wait-ready", cmd_wait_ready, "poll GetCapabilities until it answers")
    s.add_argument("seconds", type=float)

    args = p.parse_args(argv)
    global AUTHORITY
    AUTHORITY = args.authority
    TLS.update(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
               server_name=args.tls_server_name)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if any(TLS.values()) and not is_tls(args.address):
        p.error("--tls-* options need a grpcs:// ADDRESS")
    for h in args.header:
        name, eq, value = h.partition("=")
        if not eq or not name:
            p.error(f"--header {h!r}: want NAME=VALUE")
        name = name.strip().lower()
        if name.endswith("-bin"):
            # Binary metadata: VALUE is base64 (as recorder.py logs it).
            try:
                value = base64.b64decode(value, validate=True)
            except ValueError:
                p.error(f"--header {h!r}: a -bin value must be base64")
        METADATA.append((name, value))
    try:
        return args.fn(args)
    except Failure as f:
        print(f"bg_client: {f}", file=sys.stderr)
        return exit_code_for(f.code)
    except BrokenPipeError:
        # The reader went away early (`| head -1`); the RPCs were done.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
