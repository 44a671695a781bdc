"""Finds the `connections` binary the way cargo does: by asking cargo to build
it and reading the executable's path from cargo's own JSON messages, so
CARGO_TARGET_DIR, `build.target-dir` in a cargo config and --release are all
honoured. CONNECTIONS_BIN, when set, names a binary to use instead.
"""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def connections_binary(release: bool = False) -> str:
    explicit = os.environ.get("CONNECTIONS_BIN")
    if explicit:
        return os.path.abspath(explicit)
    command = ["cargo", "build", "--quiet", "--bin", "connections", "--message-format=json-render-diagnostics"]
    if release:
        command.append("--release")
    out = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            if message["target"]["name"] == "connections":
                return message["executable"]
    raise SystemExit("cargo built no `connections` executable")
