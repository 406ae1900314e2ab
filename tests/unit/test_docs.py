"""Documentation that is checked against the code it documents, and against itself."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ckptd.cli.commands import REGISTRY as CLI_COMMANDS
from ckptd.cli.main import build_parser  # importing it registers every CLI command
from ckptd.config import TABLES
from ckptd.control.commands import REGISTRY as CONTROL_COMMANDS
from ckptd.control.commands import plain, reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_LINES = 120  # the README is one page; the reference lives in docs/


def _sections(text: str, heading: str) -> dict[str, str]:
    parts = re.split(heading, text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _first_cells(text: str) -> set[str]:
    """Every name in backticks in the first cell of a table row: `a` and `a`, `b` rows alike."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_every_control_command_and_argument_is_in_protocol_md() -> None:
    """docs/protocol.md documents each registered control command and each of its arguments."""
    sections = _sections((DOCS / "protocol.md").read_text(), r"^#### `([a-z_]+)`\s*$")
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


def test_commands_md_lists_every_cli_command() -> None:
    """docs/commands.md's command list has a line for each registered `ckptd` command."""
    block = (DOCS / "commands.md").read_text().split("```\n", 2)[1]
    listed = {line.split()[1] for line in block.splitlines() if line.startswith("ckptd ")}
    assert set(CLI_COMMANDS) <= listed, f"undocumented: {set(CLI_COMMANDS) - listed}"


def test_configuration_md_has_a_row_for_every_key_of_every_table() -> None:
    """docs/configuration.md has a section per TOML table with a table row for each of its keys."""
    sections = _sections(
        (DOCS / "configuration.md").read_text(), r"^## `\[([a-z_]+)\]`.*$"
    )  # fmt: skip
    assert set(TABLES) <= set(sections), f"tables without a section: {set(TABLES) - set(sections)}"
    for table, options in TABLES.items():
        rows = _first_cells(sections[table])
        for option in options:
            assert option.key in rows, f"docs/configuration.md: [{table}] {option.key} has no row"


def test_every_event_named_in_events_md_has_its_fields_in_protocol_md() -> None:
    """Each event docs/events.md names is a row of docs/protocol.md's event table."""
    named = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", (DOCS / "events.md").read_text()))
    protocol = (DOCS / "protocol.md").read_text().split("| event | fields |", 1)[1]
    with_fields = _first_cells(protocol.split("\n\n", 1)[0])
    assert len(named) >= 20
    assert named <= with_fields, f"not in protocol.md: {sorted(named - with_fields)}"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(text), flags=re.MULTILINE):
        slug, n = _slug(heading), 1
        while slug in anchors:
            slug, n = f"{_slug(heading)}-{n}", n + 1
        anchors.add(slug)
    return anchors


def _prose(text: str) -> str:
    """The text without its fenced code blocks (a `# comment` there is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    """A relative link in the README or docs/ names an existing file and, with #, its heading."""
    targets = re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_every_docs_page_is_in_the_index_and_the_index_is_linked_from_the_readme() -> None:
    """docs/README.md links every page of docs/, and the README links docs/README.md."""
    index = (DOCS / "README.md").read_text()
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert {p for p in pages if f"]({p})" not in index} == set()
    assert "](docs/README.md)" in (ROOT / "README.md").read_text()


def test_the_readme_is_one_page() -> None:
    """The README stays a newcomer's page; the reference goes to docs/."""
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines; move reference text to docs/"
