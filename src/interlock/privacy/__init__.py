"""A user's rights over their data: access (an encrypted export) and erasure.

- ``export``: the user's profile, keys (metadata), conversations and usage rows as one JSON
  document, streamed section by section and row by row;
- ``sealed``: the export file format (scrypt or the server key, AES-256-GCM frames shared
  with the backups);
- ``erasure``: erasing a user in one transaction, recorded in the audit log.
"""
