"""The limits each appliance service runs with: one place to read and tune them (docs/security.md L12).

ssh_proto enforces the rules (§ Limits L1-L11); this module picks the numbers for the
services' SSH listeners — a :class:`ssh_proto.ListenerProfile` (admission: startups, per-source
caps, rate and penalties, authenticated connections per user and in total) and
:class:`ssh_proto.ConnectionOptions` (one connection: channels, sessions, window budget,
remote forwards) — and raises the process's file-descriptor limit at start
(:func:`raise_nofile_limit`, rule L5).

How the numbers were chosen. A descriptor is the scarce resource of one process holding
every service: a proxy connection holds one, plus one per channel it relays to a node (and,
all-in-one, the node's end of it). Per user, at the proxy: 64 connections x (1 + 64
channels) is ~4,200 descriptors and 64 x 16 MiB of receive window at worst; the per-user
cap is what keeps one account, however it misbehaves, from exhausting the process (L2), and
the listener survives exhaustion anyway (L1). The pre-auth numbers let a source (often a
NAT or an office: many users) start logins in bursts (64 at once, 8/s after) while
bounding the key exchanges it can make us compute; penalties are OpenSSH's. A node is
reached through the proxy, so its sources are the users the proxy vouches for, never the
proxy (L11). The auth service's callers are nodes and proxies, many of them possibly behind
one NAT: a larger per-source rate. The tunnel listener of the next issue (up to 10,000
nodes, many behind one NAT) gets :data:`TUNNEL_PROFILE`: no per-source rules at all; the
same tunnels arriving over the web port (TLS, ALPN ``jumpgate-tunnel``) are counted by
:class:`TunnelLimits` (docs/security.md W8), never by the web service's per-client caps.
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

import ssh_proto

log = logging.getLogger("jumpgate.limits")

MiB = 1024 * 1024

# ---- proxy (port 3023): every user's first hop ---------------------------------------------------
PROXY_PROFILE = ssh_proto.ListenerProfile(
    max_startups=(64, 30, 256), per_source_max_startups=32, per_source_rate=(8.0, 64),
    max_authenticated=2048, max_authenticated_per_user=64)
#: No shell, one node-list subsystem per `jumpgate ls`; a session daemon relays all of a
#: login's sessions as direct-tcpip channels of one connection; no remote forwards.
PROXY_OPTIONS = ssh_proto.ConnectionOptions(max_channels=64, max_sessions=8, window_budget=16 * MiB,
                                            max_remote_forwards=0)

# ---- node (port 3022) ------------------------------------------------------------------------
NODE_PROFILE = ssh_proto.ListenerProfile(
    max_startups=(64, 30, 256), per_source_max_startups=32, per_source_rate=(8.0, 64),
    max_authenticated=1024, max_authenticated_per_user=64)
#: sshd's MaxSessions (10) counted when opened; 10 sessions at the full 2 MiB window.
NODE_OPTIONS = ssh_proto.ConnectionOptions(max_channels=32, max_sessions=10, window_budget=32 * MiB,
                                           max_remote_forwards=16)

# ---- auth API (port 3025): nodes, proxies, admins, joining hosts -------------------------------
#: The account of a joining host is "joining:-join", shared by all: 64 joins at once.
AUTH_PROFILE = ssh_proto.ListenerProfile(
    max_startups=(32, 30, 256), per_source_max_startups=64, per_source_rate=(32.0, 256),
    max_authenticated=4096, max_authenticated_per_user=64)
#: Only the jumpgate-api subsystem, at most 4 channels at once; small frames.
AUTH_OPTIONS = ssh_proto.ConnectionOptions(auth_methods=("publickey", "password"), max_channels=4, max_sessions=4,
                                           window_budget=4 * MiB, max_remote_forwards=0)

# ---- tunnel (next issue): nodes dialling in, many behind one NAT --------------------------------
#: One address may be thousands of nodes: no per-source caps, rate or penalties (they would
#: refuse a whole site for one broken node); sized for all of them reconnecting at once.
#: The account of a tunnel is its node: one tunnel each, and one more while it reconnects.
TUNNEL_PROFILE = ssh_proto.ListenerProfile(
    max_startups=(512, 30, 2048), per_source_max_startups=None, per_source_rate=None, penalties=None,
    max_authenticated=12000, max_authenticated_per_user=2)
#: Per tunnel: the proxy opens one channel per user connection to the node (sessions are not
#: opened on a tunnel at all), the node a few API channels; a small window budget keeps an
#: idle tunnel cheap and the channels' windows still let one scp run at full speed.
TUNNEL_OPTIONS = ssh_proto.ConnectionOptions(auth_methods=("publickey", "password"), max_channels=256,
                                             max_sessions=0, window_budget=64 * MiB, max_remote_forwards=0)


@dataclass(frozen=True, slots=True)
class TunnelLimits:
    """What the web listener (3080) lets tunnels that negotiated ALPN ``jumpgate-tunnel`` hold
    (docs/security.md W8): their own pool, with no per-client cap (a site behind one NAT
    address is thousands of nodes), sized as :data:`TUNNEL_PROFILE`.

    ``max_tunnels``: open tunnel connections in total (``max_authenticated``);
    ``max_pending``: those not through their SSH handshake yet (the profile's ``full`` startups);
    ``handshake_timeout``: seconds from the end of the TLS handshake to the end of the SSH
    handshake (the peer authenticated); a tunnel still handshaking then is cut.
    """

    max_tunnels: int = 12000
    max_pending: int = 2048
    #: a net under the tunnel server's own bounds, never tighter: its queue for a handshake
    #: slot (60 s, appliance.tunnel.server.HANDSHAKE_QUEUE_TIME) plus its login grace (30 s)
    handshake_timeout: float = 90.0


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (rule L5); return the soft
    limit it had, which session processes get back (appliance.node.process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, hard, exc)
            return soft
        log.info("file descriptor limit raised from %d to %d", soft, hard)
    return soft
