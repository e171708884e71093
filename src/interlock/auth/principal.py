"""Who is calling: the result of authentication, carried through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "member"]


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    user_name: str
    role: Role
    tier: str
    key_id: str | None  # None when authenticated another way (development flag, session)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
