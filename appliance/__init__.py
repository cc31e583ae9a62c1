"""Jumpgate: the SSH access appliance (auth/CA, proxy, node and web services, and the CLI)."""

__version__ = "0.1.0"
