"""The load harness: the gateway's overhead against a direct call to a fake upstream.

Run ``python -m bench.run`` from the repository root; see ``bench/README.md``.
"""
