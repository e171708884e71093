"""The data-lifecycle tables of ``interlock.toml``: ``[backup]`` (where encrypted backups
go and how long they are kept) and ``[jobs]`` (the scheduled jobs). Part of
``interlock.config_file``'s ``FileConfig``; one line per problem, like the rest."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from interlock.config_base import Strict as _Strict
from interlock.jobs.cron import CronError, check_schedule

# ---- backups: [backup] -----------------------------------------------------------------

S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3Config(_Strict):
    """``[backup.s3]``: an S3-compatible object store (AWS S3, MinIO, R2, Ceph...).

    Credentials never live here: they come from the environment (see ``settings``).
    """

    bucket: str = ""
    prefix: str = Field(default="interlock/", max_length=512)
    endpoint_url: str = Field(default="", description="empty: AWS S3 itself")
    region: str = Field(default="", max_length=64)
    path_style: bool = Field(default=False, description="bucket in the path, not the host")

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if value and not S3_BUCKET.fullmatch(value):
            raise ValueError("not a bucket name (3 to 63 lowercase letters, digits, . and -)")
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.lstrip("/")
        if not value.isprintable() or "\\" in value:
            raise ValueError("must be printable text without backslashes")
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
            if parts.username or parts.password:
                raise ValueError("must not carry credentials; set them in the environment")
        return value.rstrip("/")


class BackupConfig(_Strict):
    """``[backup]``: where backups go and how many are kept."""

    destination: Literal["local", "s3"] = "local"
    directory: str = Field(default="", description="local destination; empty: DATA_DIR/backups")
    keep_last: int = Field(default=7, ge=0, le=100_000, description="0: no count rule")
    keep_days: int = Field(default=0, ge=0, le=36_500, description="0: no age rule")
    s3: S3Config = S3Config()

    @model_validator(mode="after")
    def _check_destination(self) -> BackupConfig:
        if self.destination == "s3" and not self.s3.bucket:
            raise ValueError('destination = "s3" needs [backup.s3] bucket')
        return self


# ---- scheduled jobs: [jobs] ----------------------------------------------------------------

MAX_RETENTION_DAYS = 36_500


def retention_days(default: int, description: str, *, least: int = 0) -> Any:
    """A ``*_retention_days`` key: whole days, ``least`` to a century."""
    return Field(
        default=default, ge=least, le=MAX_RETENTION_DAYS, strict=True, description=description
    )


class JobConfig(_Strict):
    """What every ``[jobs.NAME]`` table has: whether and when the job runs, for how long."""

    enabled: bool = True
    schedule: str = Field(default="0 2 * * *", description="five-field cron, in UTC")
    timeout: float = Field(default=3600.0, ge=1, le=86_400, description="seconds per run")
    # A run renews its lease every third of this; an instance silent for this long has died
    # (or lost the database), and its job goes to another instance at the next due time.
    lease: float = Field(default=300.0, ge=10, le=3600, description="seconds")

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        try:
            return check_schedule(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None


class CleanupJobConfig(JobConfig):
    """``[jobs.cleanup]``: deletes what has outlived its retention, one step per kind of row."""

    key_retention_days: int = retention_days(
        30, "days an expired or revoked API key is kept; 0 deletes it at once"
    )
    usage_retention_days: int = retention_days(0, "days usage rows are kept; 0 keeps them forever")
    conversation_retention_days: int = retention_days(
        0, "days a conversation is kept after its last message; 0 keeps them forever"
    )
    run_retention_days: int = retention_days(
        90, "days the record of a finished job run is kept", least=1
    )


class HousekeepingJobConfig(JobConfig):
    """``[jobs.housekeeping]``: expired shared-state entries, orphaned usage outboxes."""

    schedule: str = Field(default="*/10 * * * *", description="five-field cron, in UTC")
    timeout: float = Field(default=300.0, ge=1, le=86_400, description="seconds per run")


class BackupJobConfig(JobConfig):
    """``[jobs.backup]``: an encrypted backup to ``[backup]``'s destination, then a prune."""

    schedule: str = Field(default="30 3 * * *", description="five-field cron, in UTC")
    timeout: float = Field(default=21_600.0, ge=1, le=86_400, description="seconds per run")
    prune: bool = Field(
        default=True, description="delete what [backup] keep_last / keep_days no longer keep"
    )


class JobsConfig(_Strict):
    """``[jobs]``: the scheduler, and one table per built-in job."""

    scheduler: bool = Field(
        default=True, description="run due jobs in the gateway; false: only `interlock jobs run`"
    )
    cleanup: CleanupJobConfig = CleanupJobConfig()
    housekeeping: HousekeepingJobConfig = HousekeepingJobConfig()
    backup: BackupJobConfig = BackupJobConfig()

    @model_validator(mode="before")
    @classmethod
    def _known_jobs(cls, value: object) -> object:
        if isinstance(value, dict):
            known = [name for name in cls.model_fields if name != "scheduler"]
            unknown = [name for name in value if name not in cls.model_fields]
            if unknown:
                raise ValueError(
                    "; ".join(
                        f"unknown job {name!r} (the jobs are: {', '.join(known)})"
                        for name in unknown
                    )
                )
        return value
