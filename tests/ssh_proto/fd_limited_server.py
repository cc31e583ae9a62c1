"""Two ssh_proto listeners in a process with few file descriptors (a helper, not a test).

    python fd_limited_server.py NOFILE

Sets RLIMIT_NOFILE (soft and hard) to NOFILE, serves listeners "a" and "b" on free loopback
ports with a server that accepts the password "pw" and answers a command with its own text
(``fds``: how many descriptors the process holds), prints ``{"a": PORT, "b": PORT}``
on one line of stdout, and logs at INFO on stderr until killed.
test_listener_limits.py floods it until accept() fails with EMFILE (rule L1).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

import ssh_proto  # noqa: E402
from ssh_proto.keys import PrivateKey  # noqa: E402


class Server(ssh_proto.SSHServer):
    async def auth_password(self, username, password):
        return password == "pw"

    async def session(self, session):
        if session.command == "fds":
            await session.send_all(str(len(os.listdir("/proc/self/fd"))).encode())
        else:
            await session.send_all((session.command or "").encode())
        return 0


async def main() -> None:
    key = PrivateKey.generate("ssh-ed25519")
    # no per-user or total limits in ssh_proto's defaults: enough logins exhaust the descriptors
    profile = ssh_proto.ListenerProfile(max_startups=(1000, 30, 1000), penalties=None)
    async with trio.open_nursery() as nursery:
        ports = {}
        for name in ("a", "b"):
            listener = ssh_proto.SSHListener(Server, host_keys=[(key, None)], profile=profile)
            await nursery.start(listener.serve, "127.0.0.1", 0)
            ports[name] = listener.port
        print(json.dumps(ports), flush=True)


if __name__ == "__main__":
    nofile = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    trio.run(main)
