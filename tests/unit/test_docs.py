"""Every setting, error code and command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import typer.main

import interlock.errors
import interlock.settings
from interlock import config_file, settings
from interlock.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_environment_variable_is_documented() -> None:
    source = Path(settings.__file__).read_text()
    names = set(re.findall(r'(?:env\.get\(|env\[|flag\()"([A-Z_]+)"', source))
    names |= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    assert len(names) > 8
    documented = (DOCS / "configuration.md").read_text()
    assert {name for name in names if f"`{name}`" not in documented} == set()


def test_every_config_key_is_documented() -> None:
    documented = (DOCS / "configuration.md").read_text()
    models = [
        value
        for value in vars(config_file).values()
        if isinstance(value, type)
        and issubclass(value, pydantic.BaseModel)
        and value.__module__ == config_file.__name__
        and not value.__name__.startswith("_")
    ]
    assert len(models) >= 10
    for model in models:
        missing = {
            key
            for key in model.model_fields
            if f"`{key}`" not in documented
            and f"[{key}]" not in documented
            and f"[{key}." not in documented
        }
        assert missing == set(), model.__name__


def test_every_error_code_is_documented() -> None:
    codes = {
        cls.code
        for cls in vars(interlock.errors).values()
        if isinstance(cls, type) and issubclass(cls, interlock.errors.InterlockError)
    }
    documented = (DOCS / "api.md").read_text()
    assert {code for code in codes if f"`{code}`" not in documented} == set()


def test_every_command_is_documented() -> None:
    group = typer.main.get_command(app)
    commands: list[str] = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            commands.extend(f"interlock {name} {sub}" for sub in subcommands)
        else:
            commands.append(f"interlock {name}")
    documented = (DOCS / "cli.md").read_text()
    assert [c for c in commands if f"`{c}" not in documented] == []
