"""Command-line entry points of the `jumpgate` binary."""
