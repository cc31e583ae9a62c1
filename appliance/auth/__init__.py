"""The auth service's logic: the cluster CAs, passwords, TOTP and :class:`AuthService`.

The SSH API server that exposes the service (``auth/server.py``) lives beside it.
"""
from .ca import CAError, ClusterCA, pin_matches, pin_of, roles_from_certificate
from .service import (AuthService, AuthServiceError, CertResult, ClusterInfo, CreatedToken, Invite, InviteInfo,
                      JoinResult, LoginResult, TokenInfo, UserInfo, to_wire)

__all__ = ["AuthService", "AuthServiceError", "CAError", "CertResult", "ClusterCA", "ClusterInfo", "CreatedToken",
           "Invite", "InviteInfo", "JoinResult", "LoginResult", "TokenInfo", "UserInfo", "pin_matches",
           "pin_of", "roles_from_certificate", "to_wire"]
