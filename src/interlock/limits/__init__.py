"""Limits on what callers may do: rate limits per IP, key, user, tier and model with
concurrency caps (``rate_limits``; the client IP behind proxies in ``client_ip``, the
``x-ratelimit-*`` values in ``quota``, the shared-state fallback in ``fallback``) and spend
budgets per key and user (``budgets``)."""
