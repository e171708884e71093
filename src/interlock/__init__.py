"""Interlock: a self-hosted, production-grade AI chat gateway and backend."""

__version__ = "0.1.0"
