"""`jumpgate`: one binary for every service (start), the admin tool (ctl) and the client.

Subcommand modules are imported only when used, so ``jumpgate --version`` starts fast.
Every user-facing failure is one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys

VERSION = "0.1.0"


def _port(text: str) -> int:
    """A port flag, checked as the TOML file's ports are (1-65535) when the flags are parsed."""
    from ..addresses import AddressError, parse_port
    try:
        return parse_port(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is its own error, shown with its own
    usage. (argparse hands a subcommand's unknown arguments up to the top-level parser, whose
    usage tells the user nothing about the flags of the command they typed.) Nested
    subcommands (``ctl users add``) get this class too: argparse's default is ``type(self)``."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _add_start(sub) -> None:
    p = sub.add_parser("start", help="run the appliance services (auth, proxy, node, web)",
                       epilog="Every flag but --config and --print-config has a TOML setting: see docs/config.md.")
    p.add_argument("--config", help="TOML configuration file (docs/config.md)")
    p.add_argument("--print-config", action="store_true",
                   help="print a commented jumpgate.toml with every setting and its default, and exit")
    p.add_argument("--data-dir", help="state directory (default /var/lib/jumpgate as root, else ~/.local/share/jumpgate)")
    p.add_argument("--services", "--roles", dest="services", metavar="SERVICES",
                   help="comma list of services to run: auth,proxy,node,web (default all); "
                        "--roles is the same flag, as Teleport names it")
    p.add_argument("--cluster-name", help="cluster name (default: this host's name)")
    p.add_argument("--public-addr", help="name or address users and nodes reach this host by")
    p.add_argument("--listen-addr", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--auth-server", help="HOST:PORT of the auth service to join (services without auth); "
                   "a node may give a proxy's web port, PROXY:3080, and tunnel through it")
    p.add_argument("--token", help="join token from `jumpgate ctl tokens add`")
    p.add_argument("--tunnel-addr", metavar="PROXY:PORT",
                   help="a node behind a firewall: dial this proxy's tunnel port (3024), listen on no port, "
                        "join and be reached through it (instead of --auth-server)")
    p.add_argument("--nodename", help="this node's name, one DNS label (default: host name); "
                   "fixed at the first join (the proxy is NODENAME-proxy)")
    p.add_argument("--labels", help="static node labels: key=value,...")
    p.add_argument("--label-command", dest="label_commands", action="append", metavar="NAME[@PERIOD]=COMMAND",
                   help="a label whose value is COMMAND's output (a shell command line), run every PERIOD "
                        "(30s, 5m, 2h; default 60s); repeatable, e.g. --label-command kernel@1h='uname -r'")
    p.add_argument("--audit-retention-days", type=int, metavar="DAYS",
                   help="days the auth service keeps audit events; older ones are pruned hourly "
                        "(default 365; 0 keeps every event)")
    p.add_argument("--diag-addr", metavar="HOST:PORT",
                   help="serve /healthz, /readyz and /metrics (Prometheus) over plain HTTP there, e.g. "
                        "127.0.0.1:3081 (default: off; a port alone is on loopback)")
    from ..addresses import DEFAULT_PORTS
    for service, port in DEFAULT_PORTS.items():
        p.add_argument(f"--{service}-port", type=_port, metavar="PORT", help=f"{service} port (default {port})")
    p.set_defaults(func="appliance.cli.start:start")


def _format(parser) -> argparse.ArgumentParser:
    """``--format text|json`` on a ctl listing (json: the API's wire form, for scripts)."""
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def _add_ctl(sub) -> None:
    p = sub.add_parser("ctl", help="administer the cluster")
    p.add_argument("--config", help="TOML configuration file (as for start)")
    p.add_argument("--data-dir", help="the auth service's state directory (as for start)")
    p.add_argument("--auth-server", help="HOST:PORT of a remote auth service (with --identity)")
    p.add_argument("--identity", help="admin key file with its -cert.pub (for --auth-server)")
    p.add_argument("--web-pin", help="the web certificate's pin, for invites made away from the auth host")
    ctl = p.add_subparsers(dest="ctl_command", required=True)

    users = ctl.add_parser("users", help="users").add_subparsers(dest="action", required=True)
    a = users.add_parser("add", help="add a user and print an invite")
    a.add_argument("name")
    a.add_argument("--logins", required=True, help="comma list of OS logins the user may use")
    a.add_argument("--roles", default="", help="comma list of the user's roles (admin)")
    _format(users.add_parser("ls", help="list users"))
    r = users.add_parser("rm", help="remove a user")
    r.add_argument("name")
    r = users.add_parser("reset", help="reset a user's password and second factor; prints a new invite")
    r.add_argument("name")
    r = users.add_parser("unlock", help="lift a user's lockout after failed logins (password and second "
                                        "factor kept)")
    r.add_argument("name")

    bots = ctl.add_parser("bots", help="automation identities (no password, no second factor)"
                          ).add_subparsers(dest="action", required=True)
    a = bots.add_parser("add", help="add a bot and print its bot token (or --token-only: a new token)")
    a.add_argument("name")
    a.add_argument("--logins", help="comma list of OS logins its certificates name")
    a.add_argument("--roles", default="", help="comma list of its roles, as a user's (admin)")
    a.add_argument("--ttl", default="1h", help="the bot token's validity, e.g. 1h (default 1h)")
    a.add_argument("--token-only", action="store_true", help="a new bot token for an existing bot")
    _format(bots.add_parser("ls", help="list bots"))
    r = bots.add_parser("rm", help="remove a bot: its certificates and sessions end within seconds")
    r.add_argument("name")

    tokens = ctl.add_parser("tokens", help="join tokens").add_subparsers(dest="action", required=True)
    a = tokens.add_parser("add", help="create a join token")
    a.add_argument("--type", dest="kind", default="node", choices=("node", "proxy"))
    a.add_argument("--ttl", default="30m", help="validity, e.g. 30m, 4h (default 30m)")
    a.add_argument("--name", default="", help="the only name it may join as (one DNS label)")
    a.add_argument("--addr", action="append", default=[], metavar="ADDR",
                   help="an address (IP or DNS name) the host may be certified for and dialled at "
                        "(the address it joins from counts too, unless another host holds it); "
                        "repeat or comma list")
    a.add_argument("--labels", default="", help="labels for the node, key=value,...: put into the printed "
                   "`jumpgate start` command (the node's own --labels are what it advertises)")
    _format(tokens.add_parser("ls", help="list tokens"))
    r = tokens.add_parser("rm", help="remove a token (by its ID, or the token as printed)")
    r.add_argument("token_id", metavar="TOKEN_OR_ID")

    nodes = ctl.add_parser("nodes", help="node inventory").add_subparsers(dest="action", required=True)
    a = nodes.add_parser("add", help="register an agentless (OpenSSH) node (a registered name is refused)")
    a.add_argument("--name", required=True)
    a.add_argument("--addr", required=True, help="HOST:PORT of its sshd")
    a.add_argument("--labels", default="", help="key=value,... (each key once)")
    a = nodes.add_parser("update", help="change an agentless node's address or labels")
    a.add_argument("--name", required=True)
    a.add_argument("--addr", help="HOST:PORT of its sshd (default: unchanged)")
    a.add_argument("--labels", help="key=value,...: replaces all its labels (\"\" removes them; default: unchanged)")
    _format(nodes.add_parser("ls", help="list nodes"))
    r = nodes.add_parser("rm", help="remove a node")
    r.add_argument("name")

    auth = ctl.add_parser("auth", help="certificate authority").add_subparsers(dest="action", required=True)
    e = auth.add_parser("export", help="print a CA public key, or write a KRL, for OpenSSH")
    e.add_argument("--type", dest="kind", required=True, choices=("user", "host", "krl"),
                   help="user: TrustedUserCAKeys line; host: @cert-authority line; "
                        "krl: revoked user certificates, for sshd's RevokedKeys (binary: use --out)")
    e.add_argument("--out", help="write to this file instead of stdout (a KRL is replaced atomically)")
    s = auth.add_parser("sign", help="issue a host or user certificate")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", help="host name: writes a host key and certificate for sshd into --out")
    who.add_argument("--user", help="user name (a person): certifies --pubkey")
    who.add_argument("--bot", help="bot name (`ctl bots add`): certifies --pubkey as bot:NAME")
    s.add_argument("--out", help="output directory (host) or file (user, default stdout)")
    s.add_argument("--pubkey", help="public key file to certify (user, bot)")
    s.add_argument("--principals", help="extra principals (host): addresses (IPs or DNS names), comma list")
    s.add_argument("--ttl", default="", help="validity, e.g. 1h (user and bot default 1h, host default 30d)")

    _format(ctl.add_parser("status", help="the cluster: name, CA fingerprints and pins, versions, services"))
    from .recordings import add_sessions_parser
    add_sessions_parser(ctl, ctl=True)

    ev = _format(ctl.add_parser("audit", aliases=["events"], help="the audit log: filter, follow",
                                description="The newest --limit audit events (oldest first), filtered; "
                                            "--follow then prints each new one as it is recorded."))
    ev.add_argument("--session", help="only events of this session (its id: jumpgate sessions ls)")
    ev.add_argument("--node", help="only events on this node")
    ev.add_argument("--type", help="event types, comma list: user.login, or a family: user.* (see appliance/audit.py)")
    ev.add_argument("--user", help="only events about this user (or bot)")
    ev.add_argument("--since", help="only events since: a duration back (30m, 2h, 7d) or a UTC time (2026-12-01T10:00)")
    ev.add_argument("--limit", type=int, default=50, help="at most this many past events (default 50)")
    ev.add_argument("--follow", "-f", action="store_true",
                    help="keep printing new events as they come (the auth server's push stream); "
                         "--format json prints one JSON object a line")
    p.set_defaults(func="appliance.cli.ctl:ctl")


def _add_bot(sub) -> None:
    p = sub.add_parser("bot", help="a bot's certificate agent (as Teleport's tbot)")
    bot = p.add_subparsers(dest="bot_command", required=True)
    s = bot.add_parser("start", help="exchange a bot token for a certificate, then keep it renewed",
                       description="Writes KEY and KEY-cert.pub (0600) into --out; renews the certificate "
                                   "when two thirds of it have passed. Later starts renew with the saved "
                                   "certificate (no token needed while it is valid).")
    s.add_argument("--auth-server", required=True, help="HOST:PORT of the auth service (3025)")
    s.add_argument("--token", help="the bot token from `jumpgate ctl bots add` (first start)")
    s.add_argument("--out", required=True, help="directory for the key, certificate and state (made 0700)")
    s.add_argument("--ttl", default="1h", help="certificate validity, e.g. 1h (default 1h, max 24h)")
    s.add_argument("--oneshot", action="store_true", help="get or renew one certificate, then exit")
    p.set_defaults(func="appliance.cli.bot:bot")


def _add_signup(sub) -> None:
    p = sub.add_parser("signup", help="accept an invite: set a password and enrol a second factor")
    p.add_argument("--proxy", help="HOST:PORT of the web service (3080); not needed with an invite URL")
    p.add_argument("token")
    p.set_defaults(func="appliance.cli.account:signup")


def _add_login(sub) -> None:
    p = sub.add_parser("login", help="log in: get a short-lived certificate (or switch to a profile that has one)")
    p.add_argument("--proxy", help="HOST:PORT of the web service (default: from the profile)")
    p.add_argument("--user", help="user name (default: from the profile)")
    p.add_argument("--ttl", help="certificate validity, e.g. 8h (default 12h, max 30h)")
    p.add_argument("--ca-pin", help="pin of the web certificate (sha256:...) for a first login")
    p.add_argument("--insecure", action="store_true", help="do not verify the web certificate (warns; a pin kept for the proxy wins)")
    p.set_defaults(func="appliance.cli.account:login")


def _add_logout(sub) -> None:
    p = sub.add_parser("logout", help="remove the current profile's certificate and key (other profiles and "
                                      "the proxies' pins stay)")
    p.add_argument("--proxy", help="log out the profile(s) of this proxy instead of the current one")
    p.add_argument("--user", help="log out the profile(s) of this user instead of the current one")
    p.add_argument("--all", action="store_true", help="log out every profile")
    p.set_defaults(func="appliance.cli.account:logout")


def _add_status(sub) -> None:
    sub.add_parser("status", help="show the profiles (the current one marked >), their certificates checked"
                   ).set_defaults(func="appliance.cli.status:status")


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list nodes")
    p.add_argument("labels", nargs="*", help="filters key=value (also key=value,key=value): nodes carrying every pair")
    p.add_argument("--all", action="store_true",
                   help="also the nodes that missed 3 heartbeats (marked offline; hidden by default)")
    p.add_argument("--format", choices=("text", "json", "names"), default="text",
                   help="text: a table and a count (default); json: a list of maps; names: one name a line")
    p.set_defaults(func="appliance.cli.remote:ls")


def _add_ssh(sub) -> None:
    p = sub.add_parser("ssh", help="open a shell or run a command on a node",
                       epilog="Sessions are handed to a per-user session daemon that keeps the proxy connection "
                              "(started on first use; log in ~/.jumpgate/mux.log). -L, -R, -N and "
                              "JUMPGATE_MUX=0 run in this process.")
    p.add_argument("-p", "--port", type=_port, help="port of a node given by its address "
                   "(a node given by name is reached at the port it registered)")
    p.add_argument("-v", dest="verbose", action="count", default=0,
                   help="verbose: print each step of the connection (certificate, proxy, host certificates) "
                        "on stderr; runs the session in this process")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                   help="an OpenSSH option: ServerAliveInterval, ServerAliveCountMax, ConnectTimeout, "
                        "StrictHostKeyChecking (others are refused by name)")
    p.add_argument("-e", dest="escape_char", metavar="CHAR",
                   help="escape character at the start of a line (default ~; none: no escapes)")
    p.add_argument("-L", dest="local_forwards", action="append", default=[], help="[bind:]port:host:hostport")
    p.add_argument("-R", dest="remote_forwards", action="append", default=[], help="[bind:]port:host:hostport")
    p.add_argument("-A", dest="forward_agent", action="store_true", help="forward the SSH agent")
    p.add_argument("-t", dest="force_tty", action="store_true", help="force a pty")
    p.add_argument("-T", dest="no_tty", action="store_true", help="no pty")
    p.add_argument("-N", dest="no_command", action="store_true", help="no command: forwarding only")
    p.add_argument("-l", dest="login", help="login on the node (instead of login@)")
    p.add_argument("--max-parallel", type=int, metavar="N",
                   help="with a label selector: run on at most N nodes at a time (default 10, at most 64)")
    p.add_argument("target", help="[login@]node, or [login@]key=value[,key=value...]: the command runs on every "
                                  "matching node, each output line prefixed with the node's name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func="appliance.cli.sshcmd:ssh")


def _add_scp(sub) -> None:
    p = sub.add_parser("scp", help="copy files to and from nodes ([login@]node:path)")
    p.add_argument("-r", dest="recursive", action="store_true", help="copy directories recursively")
    p.add_argument("-p", dest="preserve", action="store_true", help="preserve times and modes")
    p.add_argument("-P", "--port", type=_port, help="port of a node given by its address")
    p.add_argument("-q", dest="quiet", action="store_true", help="no progress meter")
    p.add_argument("-v", dest="verbose", action="count", default=0, help="verbose: print each step of the connection")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                   help="an OpenSSH option (as for jumpgate ssh)")
    p.add_argument("sources", nargs="+")
    p.add_argument("destination")
    p.set_defaults(func="appliance.cli.remote:scp")


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print an ssh_config block for OpenSSH")
    p.add_argument("--offline", action="store_true", help="do not ask the proxy for node names")
    p.set_defaults(func="appliance.cli.remote:config")


def _add_version(sub) -> None:
    sub.add_parser("version", help="print the version").set_defaults(func=None)


def _add_sessions(sub) -> None:
    from .recordings import add_sessions_parser
    add_sessions_parser(sub)


def _add_join(sub) -> None:
    from .joincmd import add_join_parser
    add_join_parser(sub)


def _add_play(sub) -> None:
    from .recordings import add_play_parser
    add_play_parser(sub)


COMMANDS = {"start": _add_start, "ctl": _add_ctl, "bot": _add_bot, "signup": _add_signup, "login": _add_login,
            "logout": _add_logout, "status": _add_status, "ls": _add_ls, "ssh": _add_ssh, "scp": _add_scp,
            "config": _add_config, "sessions": _add_sessions, "join": _add_join, "play": _add_play, "version": _add_version}
QUIET_COMMANDS = ("ssh", "join")  # relay a session: no logging set-up unless --debug


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``) just the top level and that one command:
    building all of ctl's sub-parsers costs ``jumpgate ssh`` milliseconds it does not have."""
    parser = argparse.ArgumentParser(prog="jumpgate", description="Jumpgate: SSH access with short-lived certificates.")
    parser.add_argument("--version", action="version", version=f"jumpgate {VERSION}")
    parser.add_argument("--debug", action="store_true", help="log debugging information to stderr")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND",  # not "command": ssh has one
                                parser_class=_CommandParser)
    for name, add in COMMANDS.items():
        if only is None or name == only:
            add(sub)
    for command in sub.choices.values():  # `jumpgate ssh --debug ...` as well as `jumpgate --debug ssh ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command named in ``argv`` when only top-level flags precede it, else None."""
    for word in argv:
        if word == "--debug":
            continue
        return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_help()
        return 2
    if args.subcommand == "version":
        print(f"jumpgate {VERSION}")
        return 0
    module_name, _, func_name = args.func.partition(":")
    errors = importlib.import_module("appliance.cli.errors")
    if args.debug or args.subcommand not in QUIET_COMMANDS:
        import logging
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except errors.CliError as exc:
        print(f"jumpgate: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        print("jumpgate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
