"""Run a command, stream one through ``cat``, forward a port; then stop.

    python -m ssh_proto.examples.client HOST PORT USER KEY KNOWN_HOSTS
"""
import sys

import trio

import ssh_proto


async def main(host: str, port: int, username: str, key: str, known_hosts: str) -> None:
    async with ssh_proto.connect(host, port, username=username,
                                 client_keys=[key],                  # KEY-cert.pub is used too
                                 known_hosts=known_hosts) as conn:
        result = await conn.run("uname -a")
        print(result.exit_status, result.stdout.decode())

        proc = await conn.open_session("cat", pty=False)   # a stream: send_all / receive_some
        await proc.send_all(b"hello\n")
        await proc.send_eof()
        print(await proc.read_all(), await proc.wait())

        async with trio.open_nursery() as nursery:   # ssh -L 0:127.0.0.1:PORT (the server's own sshd)
            local = await nursery.start(conn.forward_local_port, "127.0.0.1", 0, "127.0.0.1", port)
            async with await trio.open_tcp_stream("127.0.0.1", local) as stream:
                print("forwarded:", (await stream.receive_some(256)).splitlines()[0].decode())
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    host, port, user, key, known_hosts = sys.argv[1:6]
    trio.run(main, host, int(port), user, key, known_hosts)
