"""The README is part of the product: its variable table and its test references must be true."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else f"SENDONCE_{field.upper()}"


def test_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`((?:SENDONCE_|DATABASE_URL|POWERTOOLS_IDEMPOTENCY)[A-Z0-9_]*)`", README))
    # The three unknown-policy variables share one row: `_MESSENGER` / `_LINKEDIN` suffixes.
    documented |= {f"SENDONCE_UNKNOWN_POLICY_{c}" for c in ("MESSENGER", "LINKEDIN")}
    expected = {_env_name(name) for name in Settings.model_fields}
    assert expected - documented == set()


def test_every_test_the_readme_cites_exists() -> None:
    cited = set(re.findall(r"`?(test_[a-z0-9_]+)`?", README))
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    defined = set(re.findall(r"def (test_[a-z0-9_]+)", sources)) | {
        p.stem for p in (ROOT / "tests").rglob("test_*.py")
    }
    assert cited - defined == set()
