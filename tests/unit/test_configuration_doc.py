"""docs/configuration.md lists every flag of every command with the default and variable
the code gives it: the committed table is the one the options generate."""

from __future__ import annotations

import difflib

from longline._cli._docs import committed, render
from tests.conftest import ROOT

DOC = ROOT / "docs" / "configuration.md"


def test_the_configuration_table_is_the_generated_one() -> None:
    want, have = render(), committed(DOC.read_text())
    diff = "\n".join(
        difflib.unified_diff(have.splitlines(), want.splitlines(), "doc", "code", lineterm="")
    )
    assert have == want, (
        "docs/configuration.md differs from the flags; run "
        f"`python -m longline._cli._docs --write`:\n{diff}"
    )


def test_the_table_has_every_flag_of_every_command() -> None:
    table = committed(DOC.read_text())
    for flag, env in [
        ("--retention", "LONGLINE_RETENTION"),
        ("--redis", "LONGLINE_REDIS"),
        ("--slots", "LONGLINE_SLOTS"),
        ("--tls-ca", "LONGLINE_TLS_CA"),
        ("--offline-token-delay", "LONGLINE_OFFLINE_TOKEN_DELAY"),
        ("--log-level", "LONGLINE_LOG_LEVEL"),
    ]:
        assert f"| `{flag}` |" in table and f"`{env}`" in table
    assert "| `--retention` | `7d` | `LONGLINE_RETENTION` |" in table
    assert "| (none) | empty | `LONGLINE_TOKENS` |" in table
