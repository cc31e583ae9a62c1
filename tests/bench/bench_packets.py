"""Micro-benchmark of the packet layer (ssh_proto.packets): MB/s of payload per cipher.

Not a test.  Run:  .venv/bin/python tests/bench/bench_packets.py [--chunk 262144] [--tune-malloc]

For each cipher and payload size it reports, single process, one core:

* ``rt``     -- write() + feed() + next_packet() per packet (the receiver is fed each
                packet's bytes as one piece: the best case for its buffer);
* ``stream`` -- about 1 MiB of the writer's output at a time, joined and fed in
                ``--chunk``-byte pieces as a socket would deliver it (packets straddle
                pieces), then drained with next_packet(); MB/s over write + read time;
* ``write`` / ``read`` -- the two halves of ``stream`` timed separately.

The 256 KiB case uses MAX_PAYLOAD_SIZE (255 KiB), the largest payload write() accepts.

``asyncssh`` rows run the same loops over asyncssh's own packet encryption objects
(asyncssh.encryption) with a receive loop that does what asyncssh's connection does per
packet (a ``bytes`` input buffer re-sliced per packet, header block decrypted first).
It is an approximation of asyncssh's packet layer, not its whole connection, and serves
only as a same-run yardstick.  Times are CPU time of the process (so MB/s means MB per
CPU-second), the runs of both implementations interleaved and the best kept; still,
figures vary between runs on a shared machine: compare rows of one run only.

``--tune-malloc`` raises glibc's mmap and trim thresholds (mallopt) before measuring.  With
glibc's defaults, buffers of a few hundred KiB are returned to the kernel when freed and
page-faulted back in when allocated again; on these VMs that costs more than the crypto
for 256 KiB packets.  A server process may want the same tuning at start-up.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssh_proto.ciphers import CIPHERS, MACS  # noqa: E402
from ssh_proto.packets import MAX_PAYLOAD_SIZE, PacketReader, PacketWriter  # noqa: E402

CASES = (
    ("chacha20-poly1305@openssh.com", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256"),
)
SIZES = (32 * 1024, MAX_PAYLOAD_SIZE)


def _keys(cipher: str, mac: str | None):
    info = CIPHERS[cipher]
    mac_key = os.urandom(MACS[mac].key_size) if mac else None
    return os.urandom(info.key_size), os.urandom(info.iv_size), mac_key


def _pair(cipher: str, mac: str | None):
    key, iv, mac_key = _keys(cipher, mac)
    w, r = PacketWriter(), PacketReader()
    w.set_keys(cipher, mac, key, iv, mac_key)
    r.set_keys(cipher, mac, key, iv, mac_key)
    return w, r


def _clock() -> float:
    """CPU time of this process: other jobs on the shared machine then matter much less."""
    return time.process_time()


def _count(size: int, seconds: float) -> int:
    return max(20, int(seconds * 1.0e9 / size))


def run_rt(w, r, size: int, seconds: float) -> float:
    """MB/s of write() + feed() + next_packet(), one packet at a time."""
    payload = os.urandom(size)
    n = _count(size, seconds)
    t0 = _clock()
    for _ in range(n):
        r.feed(w.write(payload))
        if r.next_packet() is None:
            raise AssertionError("packet lost")
    return n * size / (_clock() - t0) / 1e6


def run_stream(w, r, size: int, seconds: float, chunk: int) -> tuple[float, float, float]:
    """MB/s (write, read, both) with about 1 MiB of packets in flight, fed in chunks.

    Like a socket: the sender's packets are concatenated and the receiver gets them in
    ``chunk``-byte pieces, so packets straddle pieces.
    """
    payload = os.urandom(size)
    batch = max(1, (1 << 20) // size)
    rounds = max(4, _count(size, seconds) // batch)
    t_write = t_read = 0.0
    got = 0
    for _ in range(rounds):
        t0 = _clock()
        wires = [w.write(payload) for _ in range(batch)]
        t1 = _clock()
        stream = b"".join(wires)
        del wires
        pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
        del stream
        t2 = _clock()
        for data in pieces:
            r.feed(data)
            while r.next_packet() is not None:
                got += 1
        t3 = _clock()
        t_write += t1 - t0
        t_read += t3 - t2
    assert got == rounds * batch
    mb = got * size / 1e6
    return mb / t_write, mb / t_read, mb / (t_write + t_read)


def bench_ours_rt(cipher, mac, size, seconds):
    return run_rt(*_pair(cipher, mac), size, seconds)


def bench_ours_stream(cipher, mac, size, seconds, chunk):
    return run_stream(*_pair(cipher, mac), size, seconds, chunk)


# ---- asyncssh yardstick ----------------------------------------------------------------------


def _asyncssh_pair(cipher, mac):
    from asyncssh.encryption import get_encryption

    key, iv, mac_key = _keys(cipher, mac)
    etm = bool(mac and MACS[mac].etm)
    mac_alg = mac.removesuffix("-etm@openssh.com").encode() if mac else b""
    make = lambda: get_encryption(cipher.encode(), key, iv, mac_alg, mac_key or b"", etm)  # noqa: E731
    info = CIPHERS[cipher]
    return make(), make(), info.block_size, (16 if info.aead else MACS[mac].digest_size), info.aead or etm


class _AsyncsshSender:
    def __init__(self, enc, bs, hdr_in_clear):
        self.enc, self.bs, self.seq = enc, bs, 0
        self.enchdrlen = 1 if hdr_in_clear else 5

    def write(self, payload: bytes) -> bytes:
        padlen = -(self.enchdrlen + len(payload)) % self.bs
        if padlen < 4:
            padlen += self.bs
        packet = bytes((padlen,)) + payload + os.urandom(padlen)
        packet, mac = self.enc.encrypt_packet(self.seq, len(packet).to_bytes(4, "big"), packet)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return packet + mac


class _AsyncsshReceiver:
    def __init__(self, enc, bs, macsize):
        self.enc, self.bs, self.macsize, self.seq = enc, bs, macsize, 0
        self.inbuf = b""
        self.first = None
        self.pktlen = 0

    def feed(self, data: bytes) -> None:
        self.inbuf += data

    def next_packet(self):
        if self.first is None:
            if len(self.inbuf) < self.bs:
                return None
            first, self.inbuf = self.inbuf[: self.bs], self.inbuf[self.bs :]
            self.first, pktlen = self.enc.decrypt_header(self.seq, first, 4)
            self.pktlen = int.from_bytes(pktlen, "big")
        rem = 4 + self.pktlen + self.macsize - self.bs
        if len(self.inbuf) < rem:
            return None
        rest, mac = self.inbuf[: rem - self.macsize], self.inbuf[rem - self.macsize : rem]
        data = self.enc.decrypt_packet(self.seq, self.first, rest, 4, mac)
        if not data:
            raise AssertionError("MAC failure")
        self.inbuf = self.inbuf[rem:]
        self.first = None
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return data[1 : -data[0]]


def _asyncssh_ends(cipher, mac):
    enc, dec, bs, macsize, clear = _asyncssh_pair(cipher, mac)
    return _AsyncsshSender(enc, bs, clear), _AsyncsshReceiver(dec, bs, macsize)


def bench_asyncssh_rt(cipher, mac, size, seconds):
    return run_rt(*_asyncssh_ends(cipher, mac), size, seconds)


def bench_asyncssh_stream(cipher, mac, size, seconds, chunk):
    return run_stream(*_asyncssh_ends(cipher, mac), size, seconds, chunk)


def _measure(impls, cipher, mac, size, args) -> dict[str, list[float]]:
    """Best figures per implementation, their runs interleaved so that both see the same
    machine (it is shared, and its speed drifts from one second to the next)."""
    best: dict[str, list[float]] = {name: [0.0] * 4 for name, _, _ in impls}
    for _ in range(args.repeat):
        for name, rt_fn, stream_fn in impls:
            figures = (rt_fn(cipher, mac, size, args.seconds), *stream_fn(cipher, mac, size, args.seconds, args.chunk))
            best[name] = [max(a, b) for a, b in zip(best[name], figures)]
    return best


def tune_malloc() -> None:
    """Keep freed memory in the process (glibc): M_TRIM_THRESHOLD 64 MiB, M_MMAP_THRESHOLD 4 MiB."""
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(-1, 64 << 20) and libc.mallopt(-3, 4 << 20)):
        raise SystemExit("mallopt failed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="rough time per measurement")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is shown")
    ap.add_argument("--chunk", type=int, default=65536, help="receive chunk size for 'stream'")
    ap.add_argument("--no-asyncssh", action="store_true", help="skip the asyncssh yardstick")
    ap.add_argument("--tune-malloc", action="store_true", help="raise glibc's mmap/trim thresholds first")
    args = ap.parse_args()
    if args.tune_malloc:
        tune_malloc()
    impls = [("jumpgate", bench_ours_rt, bench_ours_stream)]
    if not args.no_asyncssh:
        impls.append(("asyncssh", bench_asyncssh_rt, bench_asyncssh_stream))
    print(f"{'cipher':40} {'size':>7} {'impl':9} {'rt':>7} {'stream':>7} {'write':>7} {'read':>7}   MB/s")
    for cipher, mac in CASES:
        label = cipher if mac is None else f"{cipher}+{mac.replace('@openssh.com', '')}"
        for size in SIZES:
            best = _measure(impls, cipher, mac, size, args)
            for name, (rt, wr, rd, both) in best.items():
                print(f"{label:40} {size:7d} {name:9} {rt:7.0f} {both:7.0f} {wr:7.0f} {rd:7.0f}", flush=True)


if __name__ == "__main__":
    main()
