"""Audit events (appliance/audit.py, docs/security.md U1): every value is bounded by cutting,
never by refusing the event; what a refused authentication says about who is trying is marked
as a claim; nothing non-printable reaches the log."""
from __future__ import annotations

import pytest

from appliance.audit import (ELLIPSIS, MAX_CLAIM_LEN, MAX_LIST_LEN, MAX_STR_LEN, AuditEvent, AuditEventError,
                             make_event, printable)

HUGE = "A" * 100_000


def test_an_oversized_claim_from_a_peer_is_cut_and_marked_never_refused():
    event = AuditEvent.from_wire(
        {"event": "auth", "user": HUGE, "success": False,
         "fields": {"key_id": "user:" + HUGE, "login": "root", "reason": "rule 10: unknown CA",
                    "client_ip": "10.0.0.9"}},
        time=1.0, extra={"emitter": "proxy:p1"})
    assert len(event.user) == len(event.fields["key_id"]) == MAX_CLAIM_LEN
    assert event.user.endswith(ELLIPSIS) and event.fields["key_id"].startswith("user:AAA")
    assert event.fields["claimed"] == ("user", "login", "key_id")
    assert event.fields["truncated"] == ("user", "key_id")
    assert event.fields["reason"] == "rule 10: unknown CA" and event.fields["emitter"] == "proxy:p1"


def test_our_own_refused_login_marks_the_name_tried_as_claimed():
    event = make_event("user.login", time=1.0, user="mallory", success=False, reason="unknown user",
                       client_ip="10.0.0.9")
    assert event.user == "mallory" and event.fields["claimed"] == ("user",)
    assert "truncated" not in event.fields


def test_a_success_holds_no_claims_and_keeps_long_values_up_to_the_general_bound():
    event = make_event("cert.create", time=1.0, user="alice", key_id="user:alice", note="x" * 5000)
    assert "claimed" not in event.fields
    assert len(event.fields["note"]) == MAX_STR_LEN and event.fields["truncated"] == ("note",)


def test_a_sender_cannot_set_the_claimed_or_truncated_markers():
    event = AuditEvent.from_wire({"event": "session.start", "user": "alice",
                                  "fields": {"claimed": [], "truncated": ["x"], "login": "root"}}, time=1.0)
    assert event.fields == {"login": "root"}


def test_non_printable_characters_are_escaped_so_a_value_cannot_forge_a_line_or_drive_a_terminal():
    event = AuditEvent.from_wire({"event": "auth", "user": "x\nT1000I user.login user=admin", "success": False,
                                  "fields": {"login": "\x1b]0;pwned\x07root"}}, time=1.0)
    assert event.user == "x\\nT1000I user.login user=admin"
    assert event.fields["login"] == "\\x1b]0;pwned\\x07root"
    assert all(v.isprintable() for v in (event.user, event.fields["login"]))


def test_escaping_never_makes_a_value_longer_than_its_bound():
    text, cut = printable("\x00" * 1000, 256)
    assert len(text) == 256 and cut and text.endswith(ELLIPSIS)
    assert printable("plain", 256) == ("plain", False)


def test_long_lists_are_cut_to_their_bound():
    event = make_event("cert.create", time=1.0, principals=[f"p{i}" for i in range(100)])
    assert len(event.fields["principals"]) == MAX_LIST_LEN and event.fields["truncated"] == ("principals",)


@pytest.mark.parametrize("event", [
    {"event": "auth", "user": 7}, {"event": "auth", "fields": {"k": {"nested": 1}}},
    {"event": "auth", "fields": {str(i): i for i in range(40)}}, {"event": "user.login"},
])
def test_malformed_events_are_still_refused(event):
    with pytest.raises(AuditEventError):
        AuditEvent.from_wire(event, time=1.0)
