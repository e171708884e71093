"""Limits on what callers may spend: budgets per key and per user (``budgets``)."""
