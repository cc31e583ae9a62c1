"""Benchmark SSH implementations side by side: bulk throughput and connection latency.

    python tests/bench/bench_ssh.py [--size MiB] [--runs N] [--conns N] [--only NAME]

Runs every pair registered in ``_peers.py`` in ONE process run, so that the ratios between
rows mean something on a shared machine whose absolute speed drifts from day to day:

- bulk: ``--size`` MiB through one exec channel, upload and download, for aes128-gcm and
  chacha20-poly1305; the median of ``--runs`` transfers, runs interleaved across pairs;
  MB/s, and client + server CPU ms per MiB (far steadier than MB/s when other jobs share
  the machine: contention stretches wall time, not CPU time);
- latency: ``--conns`` sequential connect + kex + ed25519 auth + exec ``true`` + close; the
  median, and the server's CPU per connection where the pair measures it.

Prints Markdown tables (MB/s are 10^6 bytes per second) with ratios against the
asyncssh→asyncssh baseline.  Must run as root: it creates a throw-away account for sshd
logins and removes it at the end.  Never collected by pytest (tests/bench is in
norecursedirs).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import asyncssh
import cryptography
from _peers import (  # first: it puts tests/interop (openssh.py) on sys.path
    BASELINE,
    BULK_PAIRS,
    CIPHERS,
    DIRECTIONS,
    LATENCY_PAIRS,
    BenchContext,
    BulkCase,
    LatencyResult,
)
import _jumpgate  # noqa: E402,F401  (registers Jumpgate's pairs)
from openssh import (
    SSH,
    KeyFactory,
    create_throwaway_user,
    remove_throwaway_user,
    require_openssh,
    sweep_stale_users,
    throwaway_user_name,
)

MB = 1_000_000
MiB = 1 << 20


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per bulk transfer (256)")
    parser.add_argument("--runs", type=int, default=3, help="transfers per bulk cell (3)")
    parser.add_argument("--conns", type=int, default=20, help="connections per latency row (20)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only the pair NAME (e.g. 'ssh→sshd'), or every pair with "
                             "NAME as client or server (e.g. 'jumpgate'); repeatable; "
                             "the baseline always runs")
    parser.add_argument("--no-bulk", action="store_true", help="skip the bulk tables")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency table")
    args = parser.parse_args(argv)
    if args.size < 1 or args.runs < 1 or args.conns < 1:
        parser.error("--size, --runs and --conns must be positive")
    return args


def selected(names: list[str], only: list[str]) -> list[str]:
    def wanted(name: str) -> bool:
        return any(o == name or o in name.split("→") for o in only)
    return [n for n in names if n == BASELINE or not only or wanted(n)]


BulkKey = tuple[str, str, str]  # pair, direction, cipher


def _client_cpu_seconds() -> float:
    # In-process clients count in RUSAGE_SELF, an ssh subprocess in RUSAGE_CHILDREN once
    # reaped; servers are never reaped during a run, so they are not counted here.
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def measure_bulk(ctx: BenchContext, name: str, case: BulkCase) -> tuple[float, float | None]:
    """(MB/s, client+server CPU ms per MiB or None when the pair cannot see its server)."""
    before = _client_cpu_seconds()
    result = BULK_PAIRS[name](ctx, case)
    client = _client_cpu_seconds() - before
    mbps = case.nbytes / result.seconds / MB
    if result.server_cpu_seconds is None:
        return mbps, None
    return mbps, (client + result.server_cpu_seconds) * 1000 / (case.nbytes / MiB)


def run_bulk(ctx: BenchContext, pairs: list[str], nbytes: int, runs: int
             ) -> tuple[dict[BulkKey, float], dict[BulkKey, float | None]]:
    """Median MB/s and CPU ms/MiB per cell; runs interleaved so drift hits all alike."""
    for name in pairs:  # warm-up: starts the servers, loads keys, fills caches
        measure_bulk(ctx, name, BulkCase(CIPHERS[0], "upload", MiB))
    speeds: dict[BulkKey, list[float]] = {}
    costs: dict[BulkKey, list[float | None]] = {}
    for run in range(runs):
        for key in [(n, d, c) for n in pairs for d in DIRECTIONS for c in CIPHERS]:
            mbps, cpu = measure_bulk(ctx, key[0], BulkCase(key[2], key[1], nbytes))
            speeds.setdefault(key, []).append(mbps)
            costs.setdefault(key, []).append(cpu)
            cpu_text = "?" if cpu is None else f"{cpu:.1f}"
            print(f"  run {run + 1}/{runs} {' '.join(key)}: {mbps:.0f} MB/s, "
                  f"{cpu_text} CPU ms/MiB", file=sys.stderr, flush=True)
    cost_medians = {k: None if None in v else statistics.median(v) for k, v in costs.items()}  # type: ignore[type-var]
    return {k: statistics.median(v) for k, v in speeds.items()}, cost_medians


def run_latency(ctx: BenchContext, pairs: list[str], conns: int) -> dict[str, LatencyResult]:
    results = {}
    for name in pairs:
        LATENCY_PAIRS[name](ctx, 1)  # warm-up: imports, page cache, first-connection costs
        results[name] = LATENCY_PAIRS[name](ctx, conns)
        ms = sorted(round(t * 1000, 1) for t in results[name].seconds)
        print(f"  latency {name}: min {ms[0]} max {ms[-1]} ms", file=sys.stderr, flush=True)
    return results


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "—"


def bulk_table(values: dict[BulkKey, float | None], pairs: list[str], unit: str, digits: int) -> str:
    """One row per pair and direction; per cipher, the value and its ratio to the baseline."""
    short = [c.split("@")[0] for c in CIPHERS]
    head = "| pair | direction | " + " | ".join(f"{c} {unit} | ÷ {BASELINE}" for c in short) + " |"
    rows = [head, "|---|---|" + "---:|---:|" * len(CIPHERS)]
    for direction in DIRECTIONS:
        for name in pairs:
            cells = []
            for cipher in CIPHERS:
                value = values[(name, direction, cipher)]
                text = "—" if value is None else f"{value:.{digits}f}"
                cells += [text, _ratio(value, values.get((BASELINE, direction, cipher)))]
            rows.append(f"| {name} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def latency_table(results: dict[str, LatencyResult], conns: int) -> str:
    base = statistics.median(results[BASELINE].seconds) if BASELINE in results else None
    rows = [f"| pair | median ms ({conns} conns) | ÷ {BASELINE} | server CPU ms/conn |",
            "|---|---:|---:|---:|"]
    for name, result in results.items():
        median = statistics.median(result.seconds)
        cpu = "—" if result.server_cpu_seconds is None else f"{result.server_cpu_seconds / conns * 1000:.1f}"
        rows.append(f"| {name} | {median * 1000:.1f} | {_ratio(median, base)} | {cpu} |")
    return "\n".join(rows)


def environment() -> str:
    openssh = subprocess.run([str(SSH), "-V"], capture_output=True, text=True).stderr.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    load = Path("/proc/loadavg").read_text().split()[0]
    return (f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), loopback, "
            f"load average {load} at start; "
            f"Python {platform.python_version()}, asyncssh {asyncssh.__version__}, "
            f"cryptography {cryptography.__version__}, {openssh}")


def with_bench_context(body: Callable[[BenchContext], None]) -> None:
    """Make the throw-away user, keys and work directory; remove them whatever happens."""
    sweep_stale_users()
    workdir = Path(tempfile.mkdtemp(prefix="jgt_bench_"))
    workdir.chmod(0o755)  # sshd reads authorized_keys below it as the throw-away user
    user = create_throwaway_user(throwaway_user_name("bench"))
    ctx = BenchContext(workdir, user, KeyFactory(workdir / "keys"))
    try:
        body(ctx)
    finally:
        ctx.close()
        remove_throwaway_user(user)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_ssh.py must run as root (it creates a throw-away account)", file=sys.stderr)
        return 2
    require_openssh()

    def body(ctx: BenchContext) -> None:
        print(f"# SSH benchmark — {environment()}\n")
        if not args.no_bulk:
            pairs = selected(list(BULK_PAIRS), args.only)
            speeds, costs = run_bulk(ctx, pairs, args.size * MiB, args.runs)
            print(f"Bulk: {args.size} MiB through one exec channel, median of {args.runs} runs\n")
            print(bulk_table(speeds, pairs, "MB/s", 0) + "\n", flush=True)  # type: ignore[arg-type]
            print("Bulk CPU cost: client + server CPU per MiB moved (less sensitive than MB/s "
                  "to other jobs on the machine)\n")
            print(bulk_table(costs, pairs, "CPU ms/MiB", 1) + "\n", flush=True)
        if not args.no_latency:
            pairs = selected(list(LATENCY_PAIRS), args.only)
            print("Latency: connect + curve25519 kex + ed25519 auth + exec true + close\n")
            print(latency_table(run_latency(ctx, pairs, args.conns), args.conns), flush=True)

    with_bench_context(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
