"""`jumpgate ssh node true` through the proxy against OpenSSH `ssh -J proxy node true`.

    python tests/bench/bench_appliance.py [--runs 10]

Issue 3's latency target: the whole `jumpgate ssh` process against OpenSSH doing the same
hops (`ssh -J`, with the certificate and CA known_hosts from `jumpgate config`), against
the same all-in-one appliance built as dist/jumpgate.pyz. Runs interleave; medians and
their same-run ratios are printed for:

- `jumpgate ssh`, the session daemon running (every `jumpgate ssh` after the first of a
  login): the thin client, the daemon's node hop over its held proxy connection;
- `jumpgate ssh`, the first after a login: each run first does what `jumpgate login` does to
  the daemon, untimed (``restart_daemon`` before the login request: the old one stops, a new
  one starts; ``connect_daemon`` after it: the new one connects to the proxy), then times the
  ssh at once; the time ``connect_daemon`` waited is printed too (what login would add were
  its own request instant: in a real login the daemon's start overlaps the request);
- `jumpgate ssh` starting the daemon (the daemon exited, e.g. idle for 30 min): each run stops
  the daemon first and waits for it to exit;
- `jumpgate ssh` in-process (JUMPGATE_MUX=0): both hops and all imports in the process;
- OpenSSH `ssh -J` (the target's reference, 1.00), and OpenSSH with a ControlMaster on the
  jump host connection (ControlPersist), which holds its proxy connection as our daemon does.

The client commands run under ``--python`` (default: Debian's /usr/bin/python3 when it has
this interpreter's minor version, as on a host that has only python3); the venv's pyenv
interpreter starts ~20 ms slower, so the daemon row is also measured with it.
Runs as root (a throw-away login user is created).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE.parent / "interop"))
from _cluster import LOOPBACK, Client, Cluster, Jumpgate, build_pyz  # noqa: E402
from openssh import create_throwaway_user, remove_throwaway_user, throwaway_user_name  # noqa: E402

from appliance.client.muxclient import connect_daemon, restart_daemon, stop_daemon  # noqa: E402


def timed(argv: list[str], env=None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]}... exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def stop_session_daemon(home: Path) -> None:
    """Stop the profile's session daemon and wait until its process is gone."""
    lock = home / "mux.lock"
    pid = int(lock.read_text().strip() or 0) if lock.exists() else 0
    stop_daemon(home)
    deadline = time.monotonic() + 10
    while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def interleaved(runs: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, run in variants.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def default_python() -> str:
    system = "/usr/bin/python3"
    try:
        same = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                              text=True, timeout=10).stdout.strip() == str(tuple(sys.version_info[:2]))
    except OSError:
        same = False
    return system if same else sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--python", default=default_python(), help="interpreter for the client commands")
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
        venv_jumpgate = jg.argv("ssh", f"{user.name}@node1", "true")
        jumpgate = [args.python, *venv_jumpgate[1:]]
        proxy = f"alice@{LOOPBACK}:{cluster.ports['proxy']}"
        openssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-J", proxy, f"{user.name}@node1", "true"]
        master = work / "cm-proxy"
        jump = (f"ssh -F {config} -o BatchMode=yes -o ControlMaster=auto -o ControlPath={master} "
                f"-o ControlPersist=60 -W %h:%p {proxy.split(':')[0]} -p {cluster.ports['proxy']}")
        openssh_cm = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", f"ProxyCommand={jump}",
                      f"{user.name}@node1", "true"]
        env, in_process = jg.env(alice.home), jg.env(alice.home, {"JUMPGATE_MUX": "0"})

        def cold() -> float:
            stop_session_daemon(alice.home)
            return timed(jumpgate, env)

        login_waits: list[float] = []

        def after_login() -> float:
            # what `jumpgate login` does to the daemon, untimed: restart it before the login
            # request, have it connect with the new certificate after; the ssh is then timed
            restart_daemon(alice.home)
            start = time.perf_counter()
            problem = connect_daemon(alice.home)
            login_waits.append(time.perf_counter() - start)
            if problem:
                raise RuntimeError(f"the session daemon did not connect: {problem}")
            return timed(jumpgate, env)

        for argv, e in ((jumpgate, env), (openssh, None), (openssh_cm, None), (jumpgate, in_process)):
            timed(argv, e)  # warm-up: extraction, page cache, the daemon and the ControlMaster started
        medians = interleaved(args.runs, {
            "daemon": lambda: timed(jumpgate, env),
            "daemon_venv": lambda: timed(venv_jumpgate, env),
            "openssh": lambda: timed(openssh),
            "openssh_cm": lambda: timed(openssh_cm),
            "in_process": lambda: timed(jumpgate, in_process),
        })
        medians.update(interleaved(max(3, args.runs // 3), {"cold": cold, "after_login": after_login}))
        base = medians["openssh"]
        rows = [("`jumpgate ssh node true`, session daemon running", "daemon"),
                (f"the same, run by {sys.executable}", "daemon_venv"),
                ("`jumpgate ssh node true`, the first after `jumpgate login`", "after_login"),
                ("`jumpgate ssh node true`, starting the session daemon (it had exited)", "cold"),
                ("`jumpgate ssh node true`, in-process (`JUMPGATE_MUX=0`)", "in_process"),
                ("OpenSSH `ssh -J proxy node true`", "openssh"),
                ("OpenSSH, ControlMaster on the proxy connection", "openssh_cm")]
        print("| command (whole process) | median | ÷ `ssh -J` |")
        print("|---|---:|---:|")
        for label, key in rows:
            print(f"| {label} | {medians[key] * 1000:.0f} ms | {medians[key] / base:.2f} |")
        print(f"client interpreter: {args.python}")
        print(f"login's wait for the new daemon to connect, were its request instant: "
              f"{statistics.median(login_waits) * 1000:.0f} ms (median; it overlaps the login request)")
        print(f"medians of {args.runs} interleaved runs ({max(3, args.runs // 3)} for the first after login "
              "and the daemon start); "
              "target: daemon running <= 1.0")
    finally:
        cluster.stop()
        remove_throwaway_user(user)


if __name__ == "__main__":
    main()
