"""A user CA and a host CA; a user certificate and a host certificate that OpenSSH trusts.

    python -m ssh_proto.examples.ca OUT_DIR USER_KEY.pub LOGIN HOST_KEY.pub HOSTNAME

Writes to OUT_DIR: ``user_ca.pub`` (for sshd's ``TrustedUserCAKeys``), ``known_hosts`` (an
``@cert-authority`` line for HOSTNAME, any port), ``user-cert.pub`` (ssh's ``CertificateFile``)
and ``host-cert.pub`` (sshd's ``HostCertificate``). ``ssh-keygen -L -f FILE`` shows a certificate.
"""
import sys
from pathlib import Path

from ssh_proto.ca import CertificateAuthority
from ssh_proto.keys import load_public_file, write_public_file


def main(out: Path, user_key: Path, login: str, host_key: Path, hostname: str) -> None:
    user_ca = CertificateAuthority.generate("user", "example")   # to keep one: .private_key_openssh()
    host_ca = CertificateAuthority.generate("host", "example")   # and ssh_proto.ca.load_authority()

    key, _ = load_public_file(user_key)
    cert = user_ca.issue_user(key, f"{login}@example", [login], ttl=3600,   # key id, principals, 1 hour
                              extensions={"permit-pty": ""},                 # a pty, no forwarding
                              critical_options={"source-address": "127.0.0.1/32,::1/128"})
    write_public_file(out / "user-cert.pub", cert)

    key, _ = load_public_file(host_key)
    write_public_file(out / "host-cert.pub", host_ca.issue_host(key, hostname, [hostname], ttl=30 * 86400))

    (out / "user_ca.pub").write_text(user_ca.trusted_user_ca_line() + "\n")
    (out / "known_hosts").write_text(host_ca.known_hosts_line([hostname, f"[{hostname}]:*"]) + "\n")
    print("serial", cert.serial, "valid until", cert.valid_before, "user CA", user_ca.fingerprint())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5])
