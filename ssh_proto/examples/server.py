"""A server that takes the keys of an authorized_keys file and echoes each command.

    python -m ssh_proto.examples.server AUTHORIZED_KEYS [PORT]

It prints its port and its (fresh) host key, for a client's known_hosts; Ctrl-C stops it.
"""
import sys

import trio

import ssh_proto
from ssh_proto.keys import PrivateKey, parse_public_line

AUTHORIZED: set[bytes] = set()                        # public key blobs


class EchoServer(ssh_proto.SSHServer):               # one instance per connection
    async def auth_publickey(self, username, key):   # the key's signature is already verified
        return key.blob in AUTHORIZED                # or ssh_proto.Partial(("keyboard-interactive",))

    async def session(self, session):                # shell / exec / subsystem
        await session.send_all(f"you ran {session.command!r}\n".encode())
        return 0                                     # exit status


async def main(port: int) -> None:
    host_key = PrivateKey.generate("ssh-ed25519")
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(lambda task_status: ssh_proto.serve(
            EchoServer, "127.0.0.1", port, host_keys=[(host_key, None)], task_status=task_status))
        print("listening on", listener.port, host_key.public_key.to_line(), flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as lines:
        AUTHORIZED.update(parse_public_line(line)[0].blob for line in lines if line.strip())
    trio.run(main, int(sys.argv[2]) if len(sys.argv) > 2 else 2222)
