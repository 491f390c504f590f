"""The README stays true: every registered architecture is in its zoo table."""
from __future__ import annotations

import re
from pathlib import Path

import kdzoo
from kdzoo.registry import is_detector

README = Path(__file__).resolve().parents[1] / "README.md"


def test_zoo_table_lists_every_registered_architecture() -> None:
    text = README.read_text()
    table = text[text.index("| family | architectures |"):]
    table = table[: table.index("\n\n")]
    listed = set(re.findall(r"`([a-z0-9_]+)`", table))
    missing = sorted(set(kdzoo.list_detectors()) - listed)
    assert not missing, f"README's zoo table does not list {missing}"
    unknown = sorted(n for n in listed if not is_detector(n))
    assert not unknown, f"README's zoo table lists unregistered names {unknown}"
