"""The echo server of ``server.py`` behind a listener's admission limits and per-connection bounds.

    python -m ssh_proto.examples.limits AUTHORIZED_KEYS [PORT]
"""
import sys

import trio

import ssh_proto
from ssh_proto.examples.server import AUTHORIZED, EchoServer
from ssh_proto.keys import PrivateKey, parse_public_line


async def main(port: int) -> None:
    host_key = PrivateKey.generate("ssh-ed25519")
    profile = ssh_proto.ListenerProfile(per_source_max_startups=10, per_source_rate=(4.0, 32),
                                        max_authenticated_per_user=32, max_authenticated=1000)
    listener = ssh_proto.SSHListener(EchoServer, host_keys=[(host_key, None)], profile=profile,
                                     options=ssh_proto.ConnectionOptions(max_channels=64, window_budget=16 << 20))
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.serve, "127.0.0.1", port)
        print("listening on", listener.port, host_key.public_key.to_line(), flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as lines:
        AUTHORIZED.update(parse_public_line(line)[0].blob for line in lines if line.strip())
    trio.run(main, int(sys.argv[2]) if len(sys.argv) > 2 else 2222)
