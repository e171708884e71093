"""The ``interlock`` command: one module per command group, assembled in ``main``."""

from interlock.cli.main import app, main

__all__ = ["app", "main"]
