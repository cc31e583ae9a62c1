"""Wall-clock cost of one full key exchange per method (a script, not a test).

Run: .venv/bin/python tests/bench/bench_kex.py [rounds]

One exchange = client init + server reply (with an Ed25519 host-key signature)
+ client processing of the reply. Signature verification is the transport's
job and is not included. Prints; asserts nothing.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from ssh_proto.kex import DEFAULT_KEX, KEX_METHODS, ExchangeInputs  # noqa: E402

KEXINIT = b"\x14" + bytes(200)
INPUTS = ExchangeInputs(b"SSH-2.0-bench-client", b"SSH-2.0-bench-server", KEXINIT, KEXINIT)
HOST_KEY = ed25519.Ed25519PrivateKey.generate()
HOST_KEY_BLOB = b"ssh-ed25519 placeholder blob; not parsed by kex"


def one_exchange(name: str) -> tuple[float, float]:
    """Return (client seconds, server seconds) for one exchange."""
    method = KEX_METHODS[name]
    start = time.perf_counter()
    client = method.client()
    init = client.init_message()
    after_init = time.perf_counter()
    reply, _ = method.server().process_init(init, INPUTS, HOST_KEY_BLOB, HOST_KEY.sign)
    after_server = time.perf_counter()
    client.process_reply(reply, INPUTS)
    end = time.perf_counter()
    return (after_init - start) + (end - after_server), after_server - after_init


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    print(f"{rounds} rounds, median per side; sum = client + server")
    print(f"{'method':34} {'sum ms':>9} {'client ms':>10} {'server ms':>10}")
    for name in DEFAULT_KEX:
        one_exchange(name)  # warm up
        samples = [one_exchange(name) for _ in range(rounds)]
        client = statistics.median(c for c, _ in samples) * 1e3
        server = statistics.median(s for _, s in samples) * 1e3
        print(f"{name:34} {client + server:9.3f} {client:10.3f} {server:10.3f}")


if __name__ == "__main__":
    main()
