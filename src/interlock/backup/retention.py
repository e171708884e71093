"""Retention: which backups ``prune`` deletes.

A backup is kept when it is one of the newest ``keep_last``, or younger than ``keep_days``
days; either rule at 0 is off, and with both off nothing is deleted. The newest backup is
always kept, whatever the rules say.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def to_delete(
    created: Sequence[tuple[str, datetime]], *, keep_last: int, keep_days: int, now: datetime
) -> list[str]:
    """The names, among ``(name, created_at)``, that the rules do not keep (oldest first)."""
    if keep_last <= 0 and keep_days <= 0:
        return []
    newest_first = sorted(created, key=lambda item: (item[1], item[0]), reverse=True)
    doomed = []
    for position, (name, when) in enumerate(newest_first):
        kept = position == 0
        kept |= keep_last > 0 and position < keep_last
        kept |= keep_days > 0 and now - when < timedelta(days=keep_days)
        if not kept:
            doomed.append(name)
    return doomed[::-1]
