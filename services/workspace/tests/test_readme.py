"""The README's permission matrix is the code's, and migrations go down and up again."""

from __future__ import annotations

from pathlib import Path

from parley_kit.db import run_migrations
from parley_kit.permissions import matrix_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- permission-matrix:begin", "<!-- permission-matrix:end -->"


def test_readme_matrix_is_the_code_matrix() -> None:
    text = README.read_text()
    start = text.index("\n", text.index(BEGIN)) + 1
    table = text[start : text.index(END)].strip()
    assert table == matrix_markdown(), "regenerate the README table with parley_kit.permissions.matrix_markdown()"


async def test_migrations_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    await run_migrations("parley_workspace", database_url)
    await run_migrations("parley_workspace", database_url, "base", downgrade=True)
    await run_migrations("parley_workspace", database_url)
