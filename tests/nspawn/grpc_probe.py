#!/usr/bin/env python3
"""A tiny gRPC client with nothing but the standard library.

    grpc_probe.py ADDRESS [HOLD_SECONDS]

ADDRESS is a unix socket path (starting with /) or HOST:PORT. Connects,
speaks HTTP/2 (prior knowledge, as gRPC does without TLS), calls
build.bazel.remote.execution.v2.Capabilities/GetCapabilities with an empty
request, and succeeds if the server answers with the server's SETTINGS and
a response message (a DATA frame holding a non-empty gRPC message; an error
would be a trailers-only response without one). Then it keeps the
connection open, idle, for HOLD_SECONDS before closing it, behaving as a
gRPC client does meanwhile: it answers PINGs, and closes at once when the
server sends GOAWAY or closes the connection.

Exit status: 0 on success, 1 otherwise, with the reason on stderr.
"""

import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, RST_STREAM = 0x0, 0x1, 0x4, 0x6, 0x7, 0x3
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
METHOD = "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name, value):
    """A literal header field without indexing, new name, no Huffman."""
    out = b"\x00"
    for s in (name.encode(), value.encode()):
        assert len(s) < 127
        out += bytes([len(s)]) + s
    return out


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed by the server")
        buf += chunk
    return buf


def main():
    address = sys.argv[1]
    hold = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(address)
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=20)
    headers = b"".join(
        hpack_literal(k, v)
        for k, v in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", METHOD),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    # An empty GetCapabilitiesRequest: flag 0 (not compressed), length 0.
    message = b"\x00" + struct.pack(">I", 0)
    sock.sendall(
        PREFACE
        + frame(SETTINGS, 0, 0)
        + frame(HEADERS, END_HEADERS, 1, headers)
        + frame(DATA, END_STREAM, 1, message)
    )
    got_settings = False
    response = b""
    while True:
        head = recv_exact(sock, 9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
        payload = recv_exact(sock, length)
        if kind == SETTINGS and not flags & ACK:
            got_settings = True
            sock.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == DATA and stream == 1:
            response += payload
        elif kind in (GOAWAY, RST_STREAM):
            raise SystemExit(f"grpc_probe: server sent frame type {kind}: {payload.hex()}")
        if stream == 1 and flags & END_STREAM:
            break
    if not got_settings:
        raise SystemExit("grpc_probe: no SETTINGS frame from the server")
    if len(response) < 5 or int.from_bytes(response[1:5], "big") == 0:
        raise SystemExit("grpc_probe: GetCapabilities returned no message (an error status)")
    size = int.from_bytes(response[1:5], "big")
    print(f"grpc_probe: {address}: GetCapabilities answered ({size} bytes)")
    sys.stdout.flush()
    deadline = time.monotonic() + hold
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                head = recv_exact(sock, 9)
            except socket.timeout:
                break
            payload = recv_exact(sock, int.from_bytes(head[:3], "big"))
            if head[3] == PING and not head[4] & ACK:
                sock.sendall(frame(PING, ACK, 0, payload))
            elif head[3] == GOAWAY:
                print("grpc_probe: server sent GOAWAY; closing")
                break
    except EOFError:
        print("grpc_probe: server closed the connection")
    sock.close()


if __name__ == "__main__":
    try:
        main()
    except (OSError, EOFError) as e:
        raise SystemExit(f"grpc_probe: {sys.argv[1]}: {e}")
