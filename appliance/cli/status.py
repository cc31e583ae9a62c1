"""``jumpgate status``: the profiles on this machine, the current one first, each checked.

What is shown is what the files say, verified, never what profile.json remembers: the
certificate in ``key-cert.pub`` is parsed and must be a user certificate for the profile's
``key.pub``, whose CA signature verifies and whose signer is the cluster's user CA that the
login recorded (``user_ca``); its own validity gives "Valid until" and the time left. A
private key file others can read is reported with OpenSSH's warning (``jumpgate ssh``
refuses it, :mod:`appliance.client.keyfile`). Exit status 0 when the current profile holds
a usable certificate, else 1.

Output (``>`` marks the current profile, as ``tsh status`` does)::

    > Profile:   alice @ jump.example.com:3080
      User:      alice
      Logins:    alice, root
      Cluster:   acme
      Proxy:     jump.example.com:3080 (SSH jump.example.com:3023)
      Valid until: 2026-12-03 08:00:00 CET (11h 59m left)

      Profile:   bob @ jump.example.com:3080
      ...
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from appliance.client.keyfile import unprotected_key_problem
from appliance.client.profile import Profile, ProfileError
from appliance.client.profiles import ProfileStore
from appliance.timestamps import format_time
from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import CERT_TYPE_USER, Certificate, PublicKey, load_public_file, parse_public_line

from .errors import CliError

__all__ = ["CertState", "certificate_state", "status"]

#: The clock status reads (tests replace it).
clock = time.time


@dataclass(frozen=True, slots=True)
class CertState:
    """What a profile's certificate is good for: ``usable`` now or not, and the row to show."""

    usable: bool
    label: str
    text: str
    logins: tuple[str, ...] = ()


def _when(epoch: float) -> str:
    return format_time(epoch, local=True)


def time_left(seconds: float) -> str:
    """``11h 59m``, ``4m``, ``under a minute``."""
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join(parts) or "under a minute"


def _invalid(why: str) -> CertState:
    return CertState(False, "Certificate", f"INVALID: {why}; run `jumpgate login`")


def _read_certificate(profile: Profile) -> Certificate | CertState:
    try:
        cert, _ = load_public_file(profile.cert_path)
        key, _ = load_public_file(profile.paths.public_key_path)
    except FileNotFoundError:
        return CertState(False, "Certificate", "none (not logged in)")
    except (OSError, KeyFormatError) as exc:
        return _invalid(f"{profile.cert_path.name} cannot be read ({exc})")
    if not isinstance(cert, Certificate):
        return _invalid(f"{profile.cert_path.name} holds no certificate")
    if cert.cert_type != CERT_TYPE_USER:
        return _invalid(f"{profile.cert_path.name} holds a host certificate, not a user certificate")
    if cert.public_key != key:
        return _invalid(f"{profile.cert_path.name} is not a certificate for this profile's key")
    return cert


def _signer_problem(profile: Profile, cert: Certificate) -> str | None:
    if not cert.verify_ca_signature():
        return "its CA signature does not verify"
    if not profile.user_ca:
        return None  # a profile from before the user CA was kept: the login renews it
    try:
        user_ca, _ = parse_public_line(profile.user_ca)
    except KeyFormatError:
        return "the profile's record of the cluster's user CA is corrupt"
    if not isinstance(user_ca, PublicKey) or cert.signature_key != user_ca:
        return f"it is not signed by the user CA of cluster {profile.cluster!r}"
    return None


def certificate_state(profile: Profile, now: float) -> CertState:
    """The checked state of ``profile``'s certificate at ``now`` (see the module rules)."""
    cert = _read_certificate(profile)
    if isinstance(cert, CertState):
        return cert
    problem = _signer_problem(profile, cert)
    if problem is not None:
        return _invalid(problem)
    if now < cert.valid_after:
        return CertState(False, "Not valid before", f"{_when(cert.valid_after)} (check the clock)", cert.principals)
    if now >= cert.valid_before:
        return CertState(False, "Expired", f"{_when(cert.valid_before)}; run `jumpgate login --proxy "
                         f"{profile.proxy} --user {profile.user}`", cert.principals)
    return CertState(True, "Valid until", f"{_when(cert.valid_before)} ({time_left(cert.valid_before - now)} left)",
                     cert.principals)


def _key_problem(profile: Profile) -> str | None:
    try:
        mode = os.stat(profile.identity_path).st_mode
    except OSError:
        return None
    return unprotected_key_problem(profile.identity_path, mode)


def _show(profile: Profile, current: bool, now: float) -> bool:
    state = certificate_state(profile, now)
    proxy = profile.proxy + (f" (SSH {profile.proxy_ssh})" if profile.proxy_ssh else "")
    rows = [("Profile", f"{profile.user} @ {profile.proxy}"), ("User", profile.user),
            ("Logins", ", ".join(state.logins or profile.logins) or "-"), ("Cluster", profile.cluster or "-"),
            ("Proxy", proxy), (state.label, state.text)]
    key_problem = _key_problem(profile) if state.usable else None
    if key_problem is not None:
        rows.append(("Key", key_problem))
    for i, (label, value) in enumerate(rows):
        mark = ("> " if current else "  ") if i == 0 else "  "
        print(f"{mark}{label + ':':<13}{value}")
    return state.usable and key_problem is None


def status(args: argparse.Namespace) -> int:
    """Every profile, the current one first (marked ``>``); 1 unless the current one is usable."""
    try:
        store = ProfileStore.open()
        profiles = store.profiles()
        current = store.current_paths()
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    if not profiles:
        print("not logged in")
        return 1
    now = clock()
    profiles.sort(key=lambda p: current is None or p.paths.home != current.home)
    usable = False
    for i, profile in enumerate(profiles):
        if i:
            print()
        is_current = current is not None and profile.paths.home == current.home
        ok = _show(profile, is_current, now)
        usable = usable or (is_current and ok)
    if current is None:
        print("\nno current profile: `jumpgate login --proxy HOST --user NAME` picks one")
    return 0 if usable else 1
