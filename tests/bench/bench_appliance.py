"""`jumpgate ssh node true` through the proxy against OpenSSH `ssh -J proxy node true`.

    python tests/bench/bench_appliance.py [--runs 10]

Issue 3's latency target: the whole `jumpgate ssh` process (interpreter start, imports,
two SSH handshakes: proxy, then node over a direct-tcpip channel) against OpenSSH doing the
same hops (`ssh -J`, with the certificate and CA known_hosts from `jumpgate config`),
against the same all-in-one appliance built as dist/jumpgate.pyz. Runs interleave; medians
and their same-run ratio are printed. Runs as root (a throw-away login user is created).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE.parent / "interop"))
from _cluster import LOOPBACK, Client, Cluster, Jumpgate, build_pyz  # noqa: E402
from openssh import create_throwaway_user, remove_throwaway_user, throwaway_user_name  # noqa: E402


def timed(argv: list[str], env=None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]}... exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jg_bench_appliance_"))
    user = create_throwaway_user(throwaway_user_name("bapp"))
    jg = Jumpgate(build_pyz(work / "jumpgate.pyz"))
    (work / "cluster").mkdir()
    cluster = Cluster(jg, work / "cluster", name="bench").start()
    try:
        alice = Client(jg, work / "home", cluster).enrol("alice", [user.name])
        config = work / "ssh_config"
        config.write_text(alice.run("config").check().stdout)
        jumpgate = jg.argv("ssh", f"{user.name}@node1", "true")
        openssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-J", f"alice@{LOOPBACK}:{cluster.ports['proxy']}",
                   f"{user.name}@node1", "true"]
        env = jg.env(alice.home)
        timed(jumpgate, env), timed(openssh)  # warm-up: extraction, page cache
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(timed(jumpgate, env))
            theirs.append(timed(openssh))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| `jumpgate ssh node true` (whole process) | {a * 1000:.0f} ms | {a / b:.2f} |")
        print(f"| OpenSSH `ssh -J proxy node true` | {b * 1000:.0f} ms | 1.00 |")
        print(f"medians of {args.runs} interleaved runs; target: ratio <= 1.0")
    finally:
        cluster.stop()
        remove_throwaway_user(user)


if __name__ == "__main__":
    main()
