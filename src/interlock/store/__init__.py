"""Persistent state: the database, its schema and migrations, and the repositories over it.

- ``database``: ``Database``, one async engine and session factory (SQLite or PostgreSQL);
- ``models``: the SQLAlchemy tables;
- ``migrate``: Alembic migrations shipped in the package, run programmatically;
- ``keys``: ``KeyStore``, users and API keys (hashes only);
- ``secret``: the server secret that keys are hashed under.
"""
