"""The client's profiles, one per proxy and user as ``tsh`` keeps them, and which one is current.

Layout of the top-level directory (``~/.jumpgate``, ``$JUMPGATE_HOME`` overrides it); every
directory 0700, every file 0600::

    profiles/HOST_PORT/USER/   one profile (:mod:`.profile`): profile.json, key, key.pub,
                               key-cert.pub, known_hosts
    current                    -> profiles/HOST_PORT/USER: the current profile, a relative
                               symlink replaced in one rename
    profile.json key key.pub key-cert.pub known_hosts
                               -> current/NAME: symlinks that follow the current profile
    clusters.json              the web pin and cluster name of each proxy logged in to: kept
                               across logouts, as known_hosts outlives a session
    mux.sock mux.lock mux.log  the session daemon, which serves the current profile

Rules:

* **No login destroys another profile's credentials.** A signup or a login writes only the
  directory of its own proxy and user, and a login switches ``current`` only after it has
  succeeded; a failed login as bob leaves alice current and her files as they were.
* **The top-level names are a promise.** ``jumpgate config`` of the single-profile layout
  wrote ``~/.jumpgate/key``, ``key-cert.pub`` and ``known_hosts`` into users' ssh_config; they
  stay, as symlinks to the current profile's files (OpenSSH follows them). :meth:`ProfileStore.open`
  migrates a home of that layout in place: each file is hard-linked into its profile
  directory, then the top-level name is replaced by its symlink in one rename, so a
  concurrent ``ssh`` finds the file at every moment.
* **Pins outlive logouts** (``clusters.json``): the next login at a known proxy needs no
  ``--ca-pin``.

Changes to the layout (migration, switching, removal) hold ``.lock`` (flock), so two
commands run at once cannot interleave them.

>>> store = ProfileStore(Path("/home/alice/.jumpgate"))                  # doctest: +SKIP
>>> store.paths_for("jump.example.com:3080", "alice").home               # doctest: +SKIP
PosixPath('/home/alice/.jumpgate/profiles/jump.example.com_3080/alice')
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..addresses import WEB_PORT, AddressError, format_endpoint, parse_endpoint
from ..files import write_atomic
from .profile import CURRENT_LINK, ClientPaths, Profile, ProfileError

__all__ = ["CLUSTERS_FILE", "LINKED_NAMES", "PROFILES_DIR", "ProfileStore", "proxy_key"]

PROFILES_DIR = "profiles"
CLUSTERS_FILE = "clusters.json"
LOCK_FILE = ".lock"
#: The top-level names of the single-profile layout, now symlinks into ``current``.
LINKED_NAMES = ("profile.json", "key", "key.pub", "key-cert.pub", "known_hosts")
CLUSTERS_VERSION = 1
_MAX_CLUSTERS = 256 * 1024
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")   # the auth service's user names (T22)


def proxy_key(proxy: str) -> str:
    """The canonical ``host:port`` of a web address (the key of pins and profiles)."""
    try:
        host, port = parse_endpoint(proxy.strip().removeprefix("https://").rstrip("/"), WEB_PORT, "proxy address")
    except AddressError as exc:
        raise ProfileError(str(exc)) from None
    return format_endpoint(host.lower(), port)


def _proxy_dir_name(proxy: str) -> str:
    host, _, port = proxy_key(proxy).rpartition(":")
    # only characters OpenSSH leaves alone in IdentityFile (no %, ~, spaces) and no '/'
    return re.sub(r"[^a-z0-9.-]", "_", host.strip("[]")) + "_" + port


class ProfileStore:
    """The profiles under one top-level directory; :meth:`open` it (migrating the old layout)."""

    def __init__(self, home: Path):
        self.home = home

    @classmethod
    def default(cls) -> ProfileStore:
        return cls(ClientPaths.default().home)

    @classmethod
    def open(cls, home: Path | None = None) -> ProfileStore:
        """The store at ``home`` (default: ``$JUMPGATE_HOME`` or ``~/.jumpgate``), a home of the
        single-profile layout migrated first."""
        store = cls(home) if home is not None else cls.default()
        if (store.home / "profile.json").is_file() and not (store.home / "profile.json").is_symlink():
            with store.locked():
                try:
                    store._migrate()
                except OSError as exc:
                    raise ProfileError(f"cannot move {store.home}'s profile into {PROFILES_DIR}/: "
                                       f"{exc.strerror}") from None
        return store

    @property
    def top(self) -> ClientPaths:
        """The top-level names (symlinks to the current profile's files)."""
        return ClientPaths(self.home)

    # ---- locking and migration --------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.top.ensure_home()
        try:
            fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ProfileError(f"cannot lock {self.home}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _migrate(self) -> None:
        """Move a single-profile home's files into their profile directory (see the rules)."""
        top = self.home / "profile.json"
        if not top.is_file() or top.is_symlink():
            return  # another command migrated it meanwhile
        old = Profile.read_at(ClientPaths(self.home))  # a corrupt one raises: nothing is moved
        assert old is not None
        target = self.paths_for(old.proxy, old.user)
        target.ensure_home()
        for name in LINKED_NAMES:
            source = self.home / name
            if source.is_symlink() or not source.exists():
                continue
            # the top-level file is the newest (an older jumpgate may have written it over a
            # link): it replaces the profile directory's copy, in one rename
            tmp = target.home / f".{name}.migrate-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, target.home / name)
        self._point_current(target)
        for name in LINKED_NAMES:
            self._link_top(name)

    # ---- where profiles are -----------------------------------------------------------
    def paths_for(self, proxy: str, user: str) -> ClientPaths:
        """The directory of the profile of ``user`` at ``proxy`` (it may not exist yet)."""
        if not _USER.fullmatch(user):
            raise ProfileError(f"invalid user name {user[:40]!r}")
        return ClientPaths(self.home / PROFILES_DIR / _proxy_dir_name(proxy) / user)

    def current_paths(self) -> ClientPaths | None:
        resolved = self.top.resolved()
        return resolved if resolved.home != self.home else None

    def current(self) -> Profile | None:
        paths = self.current_paths()
        return Profile.load(paths) if paths is not None else None

    def find(self, proxy: str, user: str) -> Profile | None:
        """The saved profile of ``user`` at ``proxy``, or None."""
        return Profile.load(self.paths_for(proxy, user))

    def profiles(self) -> list[Profile]:
        """Every saved profile, by proxy then user; unreadable ones are left out."""
        found = []
        for path in sorted((self.home / PROFILES_DIR).glob("*/*/profile.json")):
            with contextlib.suppress(ProfileError):
                profile = Profile.load(ClientPaths(path.parent))
                if profile is not None:
                    found.append(profile)
        return found

    def is_current(self, profile: Profile) -> bool:
        current = self.current_paths()
        return current is not None and current.home == profile.paths.home

    # ---- switching and removing -------------------------------------------------------
    def switch(self, paths: ClientPaths) -> None:
        """Make the profile in ``paths`` current (one rename), with the top-level links."""
        with self.locked():
            self._point_current(paths)
            for name in LINKED_NAMES:
                self._link_top(name)

    def remove(self, profile: Profile) -> bool:
        """Delete one profile's files (and unset ``current`` if it was current); True if
        anything was there. The cluster's pin stays in ``clusters.json``."""
        with self.locked():
            if self.is_current(profile):
                with contextlib.suppress(FileNotFoundError):
                    (self.home / CURRENT_LINK).unlink()
            removed = profile.paths.clear()
            with contextlib.suppress(OSError):  # only empty directories go
                profile.paths.home.rmdir()
                profile.paths.home.parent.rmdir()
        return removed

    def _point_current(self, paths: ClientPaths) -> None:
        self._replace_with_link(self.home / CURRENT_LINK, os.path.relpath(paths.home, self.home))

    def _link_top(self, name: str) -> None:
        self._replace_with_link(self.home / name, f"{CURRENT_LINK}/{name}")

    def _replace_with_link(self, path: Path, target: str) -> None:
        try:
            if path.is_symlink() and os.readlink(path) == target:
                return
            tmp = path.with_name(f".{path.name}.link-{os.getpid()}-{os.urandom(4).hex()}")
            os.symlink(target, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise ProfileError(f"cannot link {path}: {exc.strerror}") from None

    # ---- known clusters (pins) --------------------------------------------------------
    def _read_clusters(self) -> dict[str, dict[str, str]]:
        path = self.home / CLUSTERS_FILE
        try:
            with open(path, "rb") as f:
                raw = json.loads(f.read(_MAX_CLUSTERS).decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            raise ProfileError(f"{path}: unreadable; remove it (logins then need --ca-pin once)") from None
        proxies = raw.get("proxies") if isinstance(raw, dict) and raw.get("version") == CLUSTERS_VERSION else None
        if not isinstance(proxies, dict):
            raise ProfileError(f"{path}: not a version {CLUSTERS_VERSION} list of known clusters")
        return {k: v for k, v in proxies.items() if isinstance(v, dict) and isinstance(v.get("web_pin"), str)}

    def known_pin(self, proxy: str) -> str | None:
        """The web pin last seen at ``proxy`` (by a signup or a login), or None."""
        entry = self._read_clusters().get(proxy_key(proxy))
        return entry["web_pin"] if entry else None

    def known_proxies(self) -> list[str]:
        """Every proxy with a kept pin, as ``host:port``."""
        return sorted(self._read_clusters())

    def remember(self, proxy: str, web_pin: str, cluster: str) -> None:
        """Keep ``proxy``'s pin (and its cluster's name) for later logins, logouts or not."""
        with self.locked():
            proxies = self._read_clusters()
            proxies[proxy_key(proxy)] = {"web_pin": web_pin, "cluster": cluster}
            data = json.dumps({"version": CLUSTERS_VERSION, "proxies": proxies}, indent=2, sort_keys=True)
            try:
                write_atomic(self.home / CLUSTERS_FILE, (data + "\n").encode("utf-8"))
            except OSError as exc:
                raise ProfileError(f"cannot write {self.home / CLUSTERS_FILE}: {exc.strerror}") from None

    def remove_all(self) -> int:
        """Delete every profile (``logout --all``); the number removed. Pins stay."""
        return sum(self.remove(p) for p in self.profiles())
