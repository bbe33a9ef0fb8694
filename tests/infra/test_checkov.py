"""checkov on the template as CloudFormation receives it (SAM's transform applied): no failed
check, and every suppression sits in template.yaml with its reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra


def test_checkov_finds_no_failed_check(
    checkov_bin: str, expanded_template: dict[str, Any], tool_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "expanded.json"
    path.write_text(json.dumps(expanded_template))
    result = subprocess.run(
        # --skip-download: offline, no Prisma Cloud guideline lookup.
        [checkov_bin, "-f", str(path), "--framework", "cloudformation", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        env=tool_env,
        check=False,
        timeout=600,
    )
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert failed == [], "\n".join(failed)
    assert results["passed_checks"], "checkov checked nothing"
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_suppression_has_its_reason(template: dict[str, Any]) -> None:
    skipped = 0
    for logical_id, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skipped += 1
            assert skip["id"].startswith("CKV"), logical_id
            assert len(skip.get("comment", "").split()) >= 8, f"{logical_id} {skip['id']}: say why"
    assert skipped > 0
