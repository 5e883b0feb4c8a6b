#!/usr/bin/env python3
"""Execute `/bin/true`, no cache, against several executing servers in one
run, with the client of benches/peers.py (grpcio and BuildGrid's stubs):

    exec_true.py [--calls N] [--rounds R] [--heavy] NAME=127.0.0.1:PORT ...

An Action running /bin/true with an empty input root, `do_not_cache`, sent
with `skip_cache_lookup`, so every call runs it. 20 warm-up calls per
server, then N calls per server (default 200) in R alternating rounds
(default 10), so every server sees the same load. Prints one JSON line per
server: {"server", "figure": "execute_true", "p50_ms", "run_p50_ms", ...}
(run = the server's execution_start -> execution_completed). With
--heavy, two more figures, N/10 calls each in the same rounds, that show
what each process started inside an action costs: "execute_exec200" (sh
running /bin/true 200 times) and "execute_gcc" (gcc -c of an empty main,
the shape of the Bazel workspace's actions). Every answer is checked (exit
code 0, not from the cache); nothing is asserted on timings.
benches/bazel.sh runs it against ours and NativeLink's executing
configuration.
"""

import argparse
import os
import statistics
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import digest_of, re_grpc, re_pb2, report, timed, upload  # noqa: E402


WORKLOADS = {
    "execute_true": ["/bin/true"],
    "execute_exec200": ["/bin/sh", "-c", "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done"],
    "execute_gcc": ["/bin/sh", "-c", "echo 'int main(void){return 0;}' > a.c && gcc -c a.c -o a.o"],
}


class Server:
    def __init__(self, name, address, figure="execute_true"):
        self.name = name
        self.figure = figure
        ch = grpc.insecure_channel(address)
        grpc.channel_ready_future(ch).result(timeout=30)
        cas = re_grpc.ContentAddressableStorageStub(ch)
        self.ex = re_grpc.ExecutionStub(ch)
        command = re_pb2.Command(
            arguments=WORKLOADS[figure],
            environment_variables=[re_pb2.Command.EnvironmentVariable(name="PATH", value="/bin:/usr/bin")],
        )
        cmd = command.SerializeToString()
        root = re_pb2.Directory().SerializeToString()
        action = re_pb2.Action(
            command_digest=digest_of(cmd), input_root_digest=digest_of(root), do_not_cache=True
        ).SerializeToString()
        upload(cas, [cmd, root, action])
        self.req = re_pb2.ExecuteRequest(
            instance_name="", action_digest=digest_of(action), skip_cache_lookup=True
        )
        self.times = []
        self.runs = []

    def call(self):
        last = None
        for op in self.ex.Execute(self.req):
            last = op
        if not (last and last.done):
            raise SystemExit(f"exec_true.py: {self.name}: Execute ended without a finished operation")
        if last.HasField("error"):
            raise SystemExit(f"exec_true.py: {self.name}: {last.error}")
        resp = re_pb2.ExecuteResponse()
        last.response.Unpack(resp)
        if resp.status.code != 0 or resp.result.exit_code != 0 or resp.cached_result:
            raise SystemExit(
                f"exec_true.py: {self.name}: status {resp.status.code} {resp.status.message!r}, "
                f"exit {resp.result.exit_code}, cached {resp.cached_result}"
            )
        m = resp.result.execution_metadata
        run = m.execution_completed_timestamp.ToNanoseconds() - m.execution_start_timestamp.ToNanoseconds()
        self.runs.append(run / 1e6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("servers", nargs="+", metavar="NAME=ADDRESS")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--heavy", action="store_true", help="also the process-heavy workloads")
    args = ap.parse_args()
    figures = list(WORKLOADS) if args.heavy else ["execute_true"]
    servers = [Server(*s.split("=", 1), figure=f) for f in figures for s in args.servers]
    for s in servers:
        timed(20 if s.figure == "execute_true" else 2, s.call)
        s.runs = []
    for _ in range(args.rounds):
        for s in servers:
            n = args.calls if s.figure == "execute_true" else args.calls // 10
            s.times += timed(max(1, n // args.rounds), s.call)
    for s in servers:
        report(s.name, s.figure, s.times, run_p50_ms=round(statistics.median(s.runs), 3))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(f"exec_true.py: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
