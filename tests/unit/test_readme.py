"""README.md is the first screen: short, the two commands CI and newcomers run, and
links into the docs that lead somewhere (everything else lives in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short() -> None:
    assert len(README.splitlines()) < 200


def test_readme_starts_with_the_two_commands() -> None:
    first_block = re.search(r"```shell\n(.*?)\n```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["./dev run", "./dev test"]


def test_readme_links_lead_to_files() -> None:
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", README)
    assert len(links) > 10
    for link in links:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"
