"""Documentation that is checked against the code it documents."""

from __future__ import annotations

import re
from pathlib import Path

import ckptd.cli.main  # noqa: F401 - registers every CLI command
from ckptd.cli.commands import REGISTRY as CLI_COMMANDS
from ckptd.config import TABLES
from ckptd.control.commands import REGISTRY as CONTROL_COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^#### `([a-z_]+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_control_command_and_argument_is_in_protocol_md() -> None:
    """docs/protocol.md documents each registered control command and each of its arguments."""
    sections = _sections((ROOT / "docs" / "protocol.md").read_text())
    assert set(sections) == set(CONTROL_COMMANDS)
    for name, command in CONTROL_COMMANDS.items():
        for arg in command.args:
            assert f"| `{arg.name}` |" in sections[name], (
                f"{name}: argument {arg.name} undocumented"
            )


def test_readme_lists_every_cli_command_and_config_key() -> None:
    """The README names every `ckptd` command and every configuration key."""
    readme = (ROOT / "README.md").read_text()
    for name in CLI_COMMANDS:
        assert f"ckptd {name}" in readme, f"README does not show `ckptd {name}`"
    for option in (option for options in TABLES.values() for option in options):
        assert f"`{option.key}`" in readme, f"README does not document `{option.key}`"
