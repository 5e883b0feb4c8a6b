#!/usr/bin/env python3
"""Replay every spawn of a Bazel execution log in a minimal root.

Usage (as root, after a *complete* local build/test of the workspace):

    bazel ... test --execution_log_json_file=/tmp/bazeltry/exec.json //...
    python3 replay_min_root.py /tmp/bazeltry/exec.json \
        "$(bazel ... info execution_root)" [--tmp] [--dev] [--proc]

For each spawn the script builds a fresh directory tree holding only the
spawn's declared inputs (copied, symlinks dereferenced, SHA-256 checked
against the log), plus, for test spawns, the test's runfiles tree.  It then
runs the spawn's exact argv and environment with `env -i` inside a chroot
whose only host content is read-only binds of /usr, /bin, /lib and /lib64
(symlinks such as Debian's merged-usr /bin -> usr/bin are reproduced as
symlinks).  Optional extras: --tmp (tmpfs on /tmp), --dev (bind /dev),
--proc (bind /proc).

It checks the exit code and that every output Bazel recorded was produced with
the same SHA-256 (so actions are also reproducible).  This mirrors what a
hermetic Remote Execution worker does with an Action's input root.

Needs: root, util-linux `unshare`, coreutils `chroot` and `env -C`.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HOST_DIRS = ["/usr", "/bin", "/lib", "/lib64"]
# Outputs whose content legitimately differs between runs.
VOLATILE = ("test.log", "test.xml", "test.outputs/outputs.zip")


def load_log(path):
    dec = json.JSONDecoder()
    text = open(path).read()
    i, out = 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def env_of(spawn):
    return {e["name"]: e["value"] for e in spawn.get("environmentVariables", [])}


def stage(spawn, execroot, root):
    work = os.path.join(root, "execroot")
    os.makedirs(work)
    for inp in spawn.get("inputs", []):
        src = os.path.join(execroot, inp["path"])
        dst = os.path.join(work, inp["path"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=False, dirs_exist_ok=True)
            continue
        shutil.copy2(src, dst)  # follows symlinks
        want = inp.get("digest", {}).get("hash")
        if want and sha256(dst) != want:
            raise SystemExit(f"input {inp['path']} does not match the log digest")
    if spawn.get("mnemonic") == "TestRunner":
        rf = env_of(spawn).get("RUNFILES_DIR")
        if rf and os.path.isdir(os.path.join(execroot, rf)):
            shutil.copytree(os.path.join(execroot, rf), os.path.join(work, rf),
                            symlinks=False, dirs_exist_ok=True)
    for out in spawn.get("listedOutputs", []):
        os.makedirs(os.path.dirname(os.path.join(work, out)), exist_ok=True)
    return work


def run(spawn, root, with_tmp, with_dev, with_proc):
    lines = ["set -e"]
    for d in HOST_DIRS:
        if not os.path.lexists(d):
            continue
        target = root + d
        if os.path.islink(d):
            os.symlink(os.readlink(d), target)
        else:
            os.makedirs(target)
            lines.append(f"mount --bind {d} {target}")
            lines.append(f"mount -o remount,bind,ro {target}")
    if with_tmp:
        os.makedirs(root + "/tmp")
        lines.append(f"mount -t tmpfs tmpfs {root}/tmp")
    if with_dev:
        os.makedirs(root + "/dev")
        lines.append(f"mount --rbind /dev {root}/dev")
    if with_proc:
        os.makedirs(root + "/proc")
        lines.append(f"mount --rbind /proc {root}/proc")
    argv = ["chroot", root, "/usr/bin/env", "-i", "-C", "/execroot"]
    argv += [f"{k}={v}" for k, v in env_of(spawn).items()]
    argv += spawn["commandArgs"]
    lines.append('exec "$@"')
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork",
         "sh", "-c", "\n".join(lines), "sh"] + argv,
        capture_output=True, text=True)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = {a for a in sys.argv[1:] if a.startswith("--")}
    log, execroot = args
    failures = 0
    spawns = load_log(log)
    for n, spawn in enumerate(spawns):
        with tempfile.TemporaryDirectory(prefix="replay.") as root:
            work = stage(spawn, execroot, root)
            res = run(spawn, root, "--tmp" in opts, "--dev" in opts,
                      "--proc" in opts)
            problems = []
            if res.returncode != spawn.get("exitCode", 0):
                problems.append(f"exit {res.returncode}")
            for out in spawn.get("actualOutputs", []):
                p = os.path.join(work, out["path"])
                if not os.path.exists(p):
                    problems.append(f"missing {out['path']}")
                elif (not out["path"].endswith(VOLATILE)
                      and sha256(p) != out["digest"]["hash"]):
                    problems.append(f"differs {out['path']}")
            status = "OK  " if not problems else "FAIL"
            print(f"{status} {n:3d} {spawn.get('mnemonic')}: "
                  f"{spawn.get('progressMessage', '')} {' '.join(problems)}")
            if problems:
                failures += 1
                sys.stdout.write(res.stdout[-2000:] + res.stderr[-2000:] + "\n")
    print(f"replayed {len(spawns)} spawns: {len(spawns) - failures} passed, "
          f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
