"""A small real SSH server built on ssh_proto, for interop tests with OpenSSH clients.

It authenticates with authorized public keys and with user certificates from a trusted CA
(validated by ssh_proto.certs, permissions applied as docs/security.md C14 says), runs
commands and shells as subprocesses of this (test) process — with a real pty when asked —
serves the sftp subsystem through /usr/lib/openssh/sftp-server, and allows port forwarding
to loopback.
"""
from __future__ import annotations

import errno
import os
import pty as ptymod
import fcntl
import signal
import struct
import subprocess
import termios

import trio

import ssh_proto
from ssh_proto.certs import validate_user_certificate
from ssh_proto.keys import Certificate

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class TestServer(ssh_proto.SSHServer):
    """Configured per listener through class attributes set by the fixture."""

    authorized_keys: set = set()
    user_cas: tuple = ()
    password: str | None = None
    otp: str | None = None           # when set, publickey gives only partial success then kbd-int wants it
    allowed_users: tuple = ()

    async def auth_publickey_acceptable(self, username, key):
        return self._key_ok(username, key) is not None

    def _key_ok(self, username, key):
        if self.allowed_users and username not in self.allowed_users:
            return None
        if isinstance(key, Certificate):
            try:
                perms = validate_user_certificate(key, principal=username, trusted_cas=self.user_cas,
                                                  source_address=self.conn.peer_address[0] if self.conn.peer_address else None)
            except ssh_proto.CertificateError:
                return None
            return ssh_proto.policy_from_certificate(perms)
        if key.blob in self.authorized_keys:
            return ssh_proto.SessionPolicy()
        return None

    async def auth_publickey(self, username, key):
        policy = self._key_ok(username, key)
        if policy is None:
            return False
        if self.otp is not None:
            return ssh_proto.Partial(("keyboard-interactive",), policy)
        return ssh_proto.Accept(policy)

    async def auth_password(self, username, password):
        return self.password is not None and password == self.password and (not self.allowed_users or username in self.allowed_users)

    async def auth_kbdint(self, username, submethods):
        if self.otp is None:
            return False
        return ssh_proto.Challenge("", "", (("Verification code: ", True),))

    async def auth_kbdint_response(self, username, responses):
        return self.otp is not None and list(responses) == [self.otp]

    async def direct_tcpip(self, host, port, orig_host, orig_port):
        if host not in ("127.0.0.1", "localhost", "::1"):
            return None
        return await trio.open_tcp_stream(host, port)

    async def tcpip_forward(self, address, port):
        return address in ("127.0.0.1", "localhost", "")

    async def session(self, session):
        if session.kind == "subsystem":
            if session.subsystem != "sftp":
                return 1
            argv = [SFTP_SERVER]
        elif session.command is None:
            argv = ["/bin/sh", "-i"] if session.pty else ["/bin/sh"]
        else:
            argv = ["/bin/sh", "-c", session.command]
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), **session.env}
        if session.pty is not None:
            env["TERM"] = session.pty.term
            return await _run_pty(session, argv, env)
        return await _run_pipes(session, argv, env)


async def _run_pipes(session, argv, env):
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(lambda task_status: trio.run_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False,
            task_status=task_status))
        session.on_signal = lambda name: proc.send_signal(getattr(signal, "SIG" + name, signal.SIGTERM))

        async def pump_in():
            try:
                while data := await session.receive_some(65536):
                    await proc.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await proc.stdin.aclose()

        async def pump_out(stream, send):
            try:
                while data := await stream.receive_some(65536):
                    await send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # the channel or the whole connection is gone: nobody will read the rest
                proc.kill()

        nursery.start_soon(pump_in)
        async with trio.open_nursery() as outs:
            outs.start_soon(pump_out, proc.stdout, session.send_all)
            outs.start_soon(pump_out, proc.stderr, session.send_stderr)
        status = await proc.wait()
        nursery.cancel_scope.cancel()
    if status < 0:
        await session.exit_with_signal(signal.Signals(-status).name[3:])
        return None
    return status


async def _run_pty(session, argv, env):
    master, slave = ptymod.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", session.pty.rows, session.pty.cols, 0, 0))

    proc = await trio.lowlevel.open_process(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                            start_new_session=True,
                                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    os.set_blocking(master, False)
    out = trio.lowlevel.FdStream(master)  # owns the master fd from here on

    def resize(cols, rows):
        # window-change: the master fd is the stream's; after it is closed there is no pty
        if out.fileno() >= 0:
            fcntl.ioctl(out.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    session.on_resize = resize
    async with trio.open_nursery() as nursery:
        async def pump_in():
            while data := await session.receive_some(65536):
                await out.send_all(data)

        nursery.start_soon(pump_in)
        try:
            while data := await _read_pty(out):
                await session.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            proc.kill()  # the channel or the whole connection is gone
        status = await proc.wait()
        nursery.cancel_scope.cancel()
    await out.aclose()
    return status if status >= 0 else 128 - status


async def _read_pty(master):
    try:
        return await master.receive_some(65536)
    except trio.BrokenResourceError as exc:
        # reading a pty master whose slave side closed gives EIO: that is EOF
        if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EIO:
            return b""
        raise
