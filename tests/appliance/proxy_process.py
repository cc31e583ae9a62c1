"""The proxy role alone in a process of its own, for attacks measured from outside (a helper).

    python proxy_process.py DIRECTORY

Serves :func:`appliance.proxy.server.serve_proxy` with its real limits
(``appliance.limits.PROXY_PROFILE`` / ``PROXY_OPTIONS``) on a free loopback port, with a
fresh user CA; writes a user key and certificate for cluster user ``mallory`` (login
``mallory``) to DIRECTORY/user_key and DIRECTORY/user_key-cert.pub, prints the port on one
line of stdout, and serves until killed. Its RSS is read from /proc/PID/status.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

from appliance.proxy.routing import NodeDirectory, Routes  # noqa: E402
from appliance.proxy.server import ProxyIdentity, serve_proxy  # noqa: E402
from ssh_proto.certs import DEFAULT_USER_EXTENSIONS, sign_certificate  # noqa: E402
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, PrivateKey, write_private_key, write_public_file  # noqa: E402


def _certificates(directory: Path) -> tuple[ProxyIdentity, PrivateKey]:
    user_ca, host_ca = PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-ed25519")
    now = int(time.time())
    user = PrivateKey.generate("ssh-ed25519")
    cert = sign_certificate(user_ca, user.public_key, cert_type=CERT_TYPE_USER, key_id="user:mallory",
                            principals=["mallory"], valid_after=now - 60, valid_before=now + 3600,
                            extensions=DEFAULT_USER_EXTENSIONS)
    write_private_key(str(directory / "user_key"), user)
    write_public_file(directory / "user_key-cert.pub", cert)
    host = PrivateKey.generate("ssh-ed25519")
    host_cert = sign_certificate(host_ca, host.public_key, cert_type=CERT_TYPE_HOST, key_id="proxy:p1",
                                 principals=["p1", "127.0.0.1"], valid_after=now - 60, valid_before=now + 3600)
    return ProxyIdentity(host, host_cert), user_ca


async def main(directory: Path) -> None:
    identity, user_ca = _certificates(directory)

    async def fetch():
        return []

    routes = Routes(NodeDirectory(fetch, cluster="testcl"))
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(lambda task_status: serve_proxy(
            identity, [user_ca.public_key], routes, "127.0.0.1", 0, task_status=task_status))
        print(listener.port, flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    trio.run(main, Path(sys.argv[1]))
