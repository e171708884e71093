"""What every table of ``interlock.toml`` is built on (``interlock.config_file``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A table of the file: an unknown key is an error (a typo is never ignored), and the
    values cannot change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
