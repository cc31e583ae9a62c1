"""Runnable examples; ``ssh_proto/README.md`` shows each file's text (a test keeps them equal).

* :mod:`~ssh_proto.examples.client`: run a command, stream one, forward a port.
* :mod:`~ssh_proto.examples.server`: a server that takes public keys and echoes the command.
* :mod:`~ssh_proto.examples.limits`: that server behind a listener's admission limits.
* :mod:`~ssh_proto.examples.ca`: a user CA and a host CA issuing certificates OpenSSH trusts.

Each takes its host, port and keys from its arguments and stops by itself (the servers at
Ctrl-C); ``tests/interop/test_examples.py`` runs them against OpenSSH and asyncssh.
"""
