"""Cron schedules: five-field expressions (or ``@daily`` and friends), always in UTC.

Parsing and iteration are ``croniter``'s; this module narrows it to the classic five fields
(no seconds or year column, whose position differs between cron dialects) and turns its
errors into one short reason, for the config file's one line per problem.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter

ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
FIELDS = "minute hour day-of-month month day-of-week"
# The search for a next time gives up after this many years: `0 0 30 2 *` never comes.
MAX_YEARS = 5


class CronError(ValueError):
    """A schedule that cannot be used; the message says why in a few words."""


def check_schedule(expression: str) -> str:
    """``expression`` normalised (single spaces), or ``CronError`` saying what is wrong."""
    text = " ".join(expression.split())
    if not text:
        raise CronError(f"empty schedule: expected five fields ({FIELDS}) or @daily etc.")
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise CronError(f"unknown schedule {text!r}: expected one of {', '.join(ALIASES)}")
        text = text.lower()
    elif len(text.split(" ")) != 5:
        raise CronError(
            f"{text!r} has {len(text.split(' '))} fields: expected five ({FIELDS}), "
            "for example '0 2 * * *' for 02:00 UTC every day"
        )
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC), max_years_between_matches=MAX_YEARS)
    except CroniterError as exc:
        raise CronError(f"{text!r} is not a valid cron expression: {_reason(exc)}") from None
    try:
        next_time(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronError:
        raise CronError(f"{text!r} never comes (no such date)") from None
    return text


def next_time(expression: str, after: datetime) -> datetime:
    """The first time of the schedule strictly after ``after`` (UTC, whole minutes)."""
    try:
        found = croniter(
            expression, after.astimezone(UTC), max_years_between_matches=MAX_YEARS
        ).get_next(datetime)
    except CroniterError as exc:
        raise CronError(f"{expression!r}: {_reason(exc)}") from None
    return found.astimezone(UTC)


def last_time(expression: str, at_or_before: datetime) -> datetime:
    """The latest time of the schedule at or before ``at_or_before``."""
    # croniter's get_prev is strict; one second later makes a time on the schedule count.
    probe = at_or_before.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    try:
        found = croniter(expression, probe, max_years_between_matches=MAX_YEARS).get_prev(datetime)
    except CroniterError as exc:
        raise CronError(f"{expression!r}: {_reason(exc)}") from None
    return found.astimezone(UTC)


def _reason(exc: CroniterError) -> str:
    text = str(exc).strip()
    # croniter quotes the whole expression first: "[61 2 * * *] is not acceptable, out of range"
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    if text.endswith("out of range"):
        return "a field is out of range"
    if text == "is not acceptable":
        return "a field is not a number, name, range, list or step"
    return text or type(exc).__name__
