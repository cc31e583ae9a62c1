"""`jumpgate.pyz --version` cold start, after the first extraction (issue 3: < 0.3 s).

    python tests/bench/bench_cold_start.py [--runs 20]

Builds dist/jumpgate.pyz when missing, runs it once to extract it (~/.shiv), then times
``--runs`` runs and prints the median beside a bare ``python3 -c pass`` measured in the
same run (the interpreter's own start-up is the floor).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYZ = ROOT / "dist" / "jumpgate.pyz"


def timed(argv: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not PYZ.exists():
        subprocess.run(["bash", str(ROOT / "build" / "build_pyz.sh")], check=True)
    subprocess.run([sys.executable, str(PYZ), "--version"], check=True, stdout=subprocess.DEVNULL)  # extract
    pyz = timed([sys.executable, str(PYZ), "--version"], args.runs)
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    print(f"jumpgate.pyz --version: median {statistics.median(pyz) * 1000:.0f} ms "
          f"(min {min(pyz) * 1000:.0f}) over {args.runs} runs; python3 -c pass: median "
          f"{statistics.median(bare) * 1000:.0f} ms; target < 300 ms")


if __name__ == "__main__":
    main()
