"""Backups and restore: encrypted, compressed, checked archives of the database.

- ``service``: ``create_backup``, ``list_backups``, ``verify_backup``, ``restore_backup``,
  ``prune_backups`` — plain async functions over ``Settings`` (the CLI and jobs call them);
- ``archive``: the archive format (authenticated AES-256-GCM frames over zlib);
- ``keys``: which key encrypts, which keys decrypt, key ids;
- ``manifest``: what a backup holds, sealed in the archive and listed beside it;
- ``sqlite_dump``, ``postgres_dump``: consistent copies and all-or-nothing restores;
- ``destinations``: a local directory or an S3-compatible bucket;
- ``retention``: which backups ``prune`` deletes.
"""
