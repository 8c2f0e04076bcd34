"""The docs list what the code defines: message tags, the messages between the Manager
and its loop, and the tuning constants. These tests keep the two in step."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from packmule.manager import ipc
from packmule.protocol import messages as m

INTERNALS = (Path(__file__).resolve().parents[1] / "docs" / "internals.md").read_text()


def test_every_wire_message_is_in_the_tables_with_its_tag() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", INTERNALS, re.M))
    assert {int(tag): name for tag, name in rows.items()} == {
        tag: cls.__name__ for tag, cls in m._BY_TAG.items()}
    assert f"`PROTOCOL_VERSION` = {m.PROTOCOL_VERSION}." in INTERNALS
    assert f"| `PROTOCOL_VERSION` | {m.PROTOCOL_VERSION} |" in INTERNALS


def test_every_wire_message_lists_its_fields() -> None:
    """The Fields column of each message's row names its fields, in order (asides in
    parentheses apart); each structure's bullet names all of its fields."""
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| ([^|]*) \|", INTERNALS, re.M)
    assert rows
    for tag, name, fields in rows:
        listed = re.findall(r"`(\w+)(?::[^`]*)?`", re.sub(r"\([^)]*\)", "", fields))
        assert listed == list(m.FIELD_HINTS[m._BY_TAG[int(tag)]]), f"{name}: {fields}"
    structures = [c for c in m.FIELD_HINTS if not issubclass(c, m.Message)]
    assert structures
    for cls in structures:
        bullet = re.search(rf"^- `{cls.__name__}`: (.*?)(?=^- |^$)", INTERNALS, re.M | re.S)
        assert bullet, f"{cls.__name__} is not in the list of structures"
        named = set(re.findall(r"`(\w+)`", bullet.group(1)))
        assert set(m.FIELD_HINTS[cls]) <= named, f"{cls.__name__}: {bullet.group(1)}"


def test_every_message_between_the_manager_and_its_loop_is_in_the_table() -> None:
    listed = set(re.findall(r"^\| to the (?:loop|Manager) \| `(\w+)`(?: / `(\w+)`)?", INTERNALS,
                            re.M))
    names = {n for pair in listed for n in pair if n}
    assert names == {cls.__name__ for cls in ipc._TYPES}


def test_every_constant_in_the_numbers_table_exists_where_it_says() -> None:
    table = INTERNALS.split("## Numbers", 1)[1]
    checked = 0
    for names, module in re.findall(r"^\| ((?:`[A-Z][A-Z_0-9]*`(?:, )?)+) \| [^|]* \| "
                                    r"`([\w/]+)\.py` \|", table, re.M):
        mod = importlib.import_module("packmule." + module.replace("/", "."))
        for name in re.findall(r"`(\w+)`", names):
            assert hasattr(mod, name), f"{name} is not in packmule/{module}.py"
            checked += 1
    assert checked >= 25
