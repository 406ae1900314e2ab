"""Documentation that is checked against the code it documents."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ckptd.cli.commands import REGISTRY as CLI_COMMANDS
from ckptd.cli.main import build_parser  # importing it registers every CLI command
from ckptd.config import TABLES
from ckptd.control.commands import REGISTRY as CONTROL_COMMANDS
from ckptd.control.commands import plain, reference

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


def test_protocol_md_sections_start_with_the_registry_s_docs() -> None:
    """Each command's section opens with its docstring and argument table from the registry."""
    text = _flat((ROOT / "docs" / "protocol.md").read_text())
    for name, command in CONTROL_COMMANDS.items():
        assert _flat(reference(command)) in text, f"docs/protocol.md: `{name}` differs from its doc"


def test_cli_help_of_daemon_commands_comes_from_the_registry() -> None:
    """`ckptd checkpoint/stop/restart/status --help` show the registry's doc and argument docs."""
    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )  # argparse keeps its subcommands here
    for name in ("checkpoint", "stop", "restart", "status"):
        command, parser = CONTROL_COMMANDS[name], sub.choices[name]
        assert CLI_COMMANDS[name].summary == command.summary
        assert _flat(parser.description or "") == _flat(plain(command.doc))
        options = parser._option_string_actions
        for arg in command.args:
            assert options[arg.cli_flag].help == arg.cli_help


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_readme_lists_every_cli_command_and_config_key() -> None:
    """The README names every `ckptd` command and every configuration key."""
    readme = (ROOT / "README.md").read_text()
    for name in CLI_COMMANDS:
        assert f"ckptd {name}" in readme, f"README does not show `ckptd {name}`"
    for option in (option for options in TABLES.values() for option in options):
        assert f"`{option.key}`" in readme, f"README does not document `{option.key}`"
