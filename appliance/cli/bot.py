"""`jumpgate bot start`: a bot's certificate agent (Teleport's ``tbot``, at its smallest).

The first start exchanges the bot token from ``jumpgate ctl bots add`` for a certificate
(``bot_join`` over the auth API, the server verified by the token's CA pin); every later
renewal authenticates with the certificate it holds (``renew_bot_cert``), before it expires,
so the token is needed once. The directory (``--out``, 0700) holds::

    key            the bot's private key (0600, made here, never sent)
    key-cert.pub   its current certificate (key id bot:NAME), replaced atomically
    bot.json       the auth server and the host CA pin (no secret)

``ssh -i DIR/key -o CertificateFile=DIR/key-cert.pub ...`` (or ``jumpgate``'s own files) then
uses it. A removed bot (``ctl bots rm``) is refused at its next renewal: the agent says so
and exits non-zero. docs/security.md B3.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import trio

from .errors import CliError

RENEW_AT = 2 / 3          # renew when this share of the certificate's life has passed
RETRY_SECONDS = 30.0      # after a failed renewal (the auth server unreachable), try again


def bot(args) -> int:
    return trio.run(_start, args)


async def _start(args) -> int:
    from .account import parse_ttl
    out = Path(args.out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ttl = parse_ttl(args.ttl)
    expires = await _certify(args, out, ttl)
    while not args.oneshot:
        left = expires - time.time()
        await trio.sleep(max(1.0, left * (1 - RENEW_AT)))
        try:
            expires = await _renew(args.auth_server, out, ttl)
        except CliError as exc:
            if expires <= time.time() or "revoked" in str(exc) or "no bot" in str(exc):
                raise
            print(f"jumpgate bot: renewal failed, retrying in {RETRY_SECONDS:g}s: {exc}", file=sys.stderr, flush=True)
            await trio.sleep(RETRY_SECONDS)
    return 0


async def _certify(args, out: Path, ttl: int) -> float:
    """Renew with the saved certificate while it is valid; else use the token."""
    from ssh_proto.keys import load_identity
    cert_path = out / "key-cert.pub"
    if cert_path.exists() and (out / "bot.json").exists():
        _, cert = load_identity(str(out / "key"))
        if cert is not None and cert.valid_before > time.time() + 30:
            return await _renew(args.auth_server, out, ttl)
    if not args.token:
        raise CliError(f"no valid certificate in {out}: pass --token from `jumpgate ctl bots add`")
    return await _join(args.auth_server, args.token, out, ttl)


def _key(out: Path):
    from ssh_proto.keys import PrivateKey, load_private_key, write_private_key
    path = out / "key"
    if path.exists():
        return load_private_key(str(path))
    key = PrivateKey.generate("ssh-ed25519")
    write_private_key(str(path), key)
    os.chmod(path, 0o600)
    return key


async def _join(auth_server: str, token: str, out: Path, ttl: int) -> float:
    from ssh_proto import SSHError
    from ..api.client import ApiClient, ApiError
    from ..membership import MembershipError, parse_token
    try:
        secret, pin = parse_token(token)
    except MembershipError as exc:
        raise CliError(f"--token: {exc}") from None
    key = _key(out)
    try:
        async with ApiClient.connect_join(auth_server, secret, pin) as api:
            result = await api.bot_join(public_key_blob=key.public_key.blob, ttl=ttl)
    except ApiError as exc:
        raise CliError(f"the bot token was refused: {exc.message}") from None
    except (OSError, SSHError) as exc:
        raise CliError(f"cannot reach the auth server {auth_server}: {exc}") from None
    _save(out, result["cert"], {"auth_server": auth_server, "ca_pin": pin, "key_id": result["key_id"]})
    return float(result["expires"])


async def _renew(auth_server: str, out: Path, ttl: int) -> float:
    from ssh_proto import SSHError
    from ssh_proto.keys import load_identity
    from ..api.client import ApiClient, ApiError
    state = json.loads((out / "bot.json").read_text())
    key, cert = load_identity(str(out / "key"))
    try:
        async with ApiClient.connect(auth_server, identity=(key, cert), ca_pin=state["ca_pin"]) as api:
            result = await api.renew_bot_cert(public_key_blob=key.public_key.blob, ttl=ttl)
    except ApiError as exc:
        raise CliError(f"renewal refused: {exc.message}") from None
    except (OSError, SSHError) as exc:
        # a removed bot's certificate is refused at authentication
        raise CliError(f"renewal failed ({cert.key_id} revoked or the auth server unreachable): {exc}") from None
    _save(out, result["cert"], state)
    return float(result["expires"])


def _save(out: Path, cert_line: str, state: dict) -> None:
    from ..files import write_atomic
    write_atomic(out / "key-cert.pub", (cert_line.strip() + "\n").encode(), mode=0o600)
    write_atomic(out / "bot.json", (json.dumps(state) + "\n").encode(), mode=0o600)
    print(f"jumpgate bot: certificate {state.get('key_id') or ''} written to {out / 'key-cert.pub'}",
          file=sys.stderr, flush=True)
