#!/usr/bin/env python3
"""Runs examples/python/client.py against a fresh server so it cannot rot.

Starts the binary (found as cargo_binary.py says) on a free loopback port over
a new SQLite file with one API token, creates a site, an account with a
password and a facebook link through the generated Python stubs, runs the
example, and checks what it printed. Needs grpcio and the stubs of
examples/python/generate.sh (.ci/run sets both up).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import grpc

from cargo_binary import ROOT, connections_binary

EXAMPLE = os.path.join(ROOT, "examples", "python")
sys.path.insert(0, os.path.join(EXAMPLE, "gen"))

from connections.v1 import (  # noqa: E402
    admin_service_pb2 as admin_pb,
    admin_service_pb2_grpc as admin_grpc,
    connection_service_pb2 as connection_pb,
    connection_service_pb2_grpc as connection_grpc,
    types_pb2,
)

# ("caught up at position N" comes before the event or not at all, depending
# on whether the event was sequenced before the replay reached the head.)
EXPECTED = [
    r"removed facebook fb-1 \(REMOVAL_MODE_HARD\), event [0-9a-f-]{36}",
    r"event 1: facebook fb-1 removed from 3_py/7 by example-ci \(EVENT_SOURCE_REMOVE_CONNECTION\), "
    r"login methods left: 1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, server: subprocess.Popen) -> None:
    """Until grpc.health.v1.Health/Check answers SERVING (field 1 = 1)."""
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda _: b"",
            response_deserializer=lambda raw: raw,
        )
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if check(None, timeout=1) == b"\x08\x01":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"the server at {target} did not report SERVING within 30 s")


def main() -> int:
    binary = connections_binary()
    workdir = tempfile.mkdtemp(prefix="python-example-")
    database = f"sqlite://{workdir}/connections.db?mode=rwc"
    env = dict(os.environ, RUST_LOG="warn", CONNECTIONS_DATABASE_URL=database)
    token = subprocess.run(
        [binary, "token", "create", "--caller", "example-ci", "--sites", "*", "--permissions",
         "admin,connections.write,connections.read,events.subscribe"],
        env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ).stdout.strip()
    target = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(workdir, "server.log"), "w")
    server = subprocess.Popen([binary, "serve", "--listen", target, "--http-listen", "127.0.0.1:0"], env=env, stdout=log, stderr=log)
    try:
        wait_serving(target, server)
        metadata = [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(target) as channel:
            admin = admin_grpc.AdminServiceStub(channel)
            admin.UpsertSite(admin_pb.UpsertSiteRequest(api_key="3_py", vhost=77, name="Python"), metadata=metadata)
            admin.UpsertAccount(
                admin_pb.UpsertAccountRequest(
                    api_key="3_py", uid="7",
                    login_ids=[types_pb2.LoginId(login_id="py@example.com", has_password=True)],
                ),
                metadata=metadata,
            )
            connection_grpc.ConnectionServiceStub(channel).LinkConnection(
                connection_pb.LinkConnectionRequest(
                    api_key="3_py", uid="7", provider="facebook", provider_uid="fb-1"
                ),
                metadata=metadata,
            )
        run = subprocess.run(
            [sys.executable, os.path.join(EXAMPLE, "client.py"), "--target", target, "--token", token,
             "--api-key", "3_py", "--uid", "7", "--provider", "facebook"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
        )
        print(run.stdout, end="")
        lines = run.stdout.splitlines()
        missing = [p for p in EXPECTED if not any(re.fullmatch(p, line) for line in lines)]
        if run.returncode != 0 or missing:
            print(f"FAIL: exit {run.returncode}; expected lines not printed: {missing}", file=sys.stderr)
            return 1
        print("ok   examples/python/client.py removed a connection and saw its event")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
