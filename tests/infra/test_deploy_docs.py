"""docs/deploy.md against template.yaml: every parameter, default, range and count the guide
states is the template's, and no name the stack derives from its name is hard-coded.

A new user follows the guide alone; a wrong figure there (a timeout range, a secret count) is
a failed first deploy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "deploy.md").read_text()
FLAT = " ".join(DOCS.split())


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == type_}


def parameter_rows() -> dict[str, tuple[str, str]]:
    """Parameter name -> (default cell, meaning cell) from the guide's parameter table; a row
    naming two parameters (``A` / `B``) gives both the same cells."""
    rows: dict[str, tuple[str, str]] = {}
    for line in DOCS.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Za-z]+)`", cells[0])
        if names and all(n[0].isupper() for n in names) and not cells[0].endswith("Alarm`"):
            for name in names:
                rows[name] = (cells[1], cells[2])
    return rows


def table_row(first_cell: str) -> str:
    [line] = [line for line in DOCS.splitlines() if line.startswith(f"| {first_cell} ")]
    return line


def test_every_parameter_is_documented_and_nothing_else(template: dict[str, Any]) -> None:
    rows = parameter_rows()
    assert set(rows) == set(template["Parameters"])


def test_documented_defaults_are_the_templates(template: dict[str, Any]) -> None:
    for name, (default_cell, _) in parameter_rows().items():
        param = template["Parameters"][name]
        if "Default" not in param:
            assert default_cell == "(required)", name
        elif param["Default"] == "":
            assert default_cell == "empty", name
        elif name not in ("GraphApiBaseUrl", "GraphApiVersion"):
            assert default_cell.strip("`") == str(param["Default"]), name
        else:
            assert f"`{param['Default']}`" in default_cell, name


def test_documented_ranges_are_the_templates(template: dict[str, Any]) -> None:
    ranged = {n: p for n, p in template["Parameters"].items() if "MinValue" in p}
    rows = parameter_rows()
    for name, param in ranged.items():
        meaning = rows[name][1]
        if "MaxValue" in param:
            assert f"{param['MinValue']}-{param['MaxValue']}" in meaning, name
        else:
            assert f"at least {param['MinValue']}" in meaning, name
        # No other range is stated for it.
        stated = re.findall(r"\b\d+-\d+\b", meaning)
        assert stated == ([f"{param['MinValue']}-{param['MaxValue']}"] if "MaxValue" in param else []), name


def test_fixed_timeouts_are_the_templates(template: dict[str, Any]) -> None:
    for function, label in [
        ("WebhookFunction", "webhook"),
        ("EnqueueFunction", "enqueue"),
        ("ControlFunction", "control"),
        ("MigrateFunction", "migrate"),
    ]:
        timeout = template["Resources"][function]["Properties"]["Timeout"]
        assert f"{label} {timeout} s" in FLAT, function


def test_secret_count_and_names(template: dict[str, Any]) -> None:
    secrets = resources_of(template, "AWS::SecretsManager::Secret")
    row = table_row(f"Secrets ({len(secrets)})")
    assert set(re.findall(r"`(\w+Secret)`", row)) == set(secrets)
    assert f"The stack creates {len(secrets)} secrets" in DOCS
    suffixes = {s["Properties"]["Name"]["Fn::Sub"].split("/", 1)[1] for s in secrets.values()}
    for prefix in ["${AWS::StackName}/"]:
        assert all(s["Properties"]["Name"]["Fn::Sub"].startswith(prefix) for s in secrets.values())
    # Secret ids, not log group paths (/sendonce/$STACK/<function>).
    named = set(re.findall(r"(?<!/)\$STACK/([a-z-]+)", DOCS)) - {"database-url"}
    assert named == suffixes


def test_no_name_hard_codes_the_default_stack_name() -> None:
    assert not re.findall(r"sendonce/[a-z]", DOCS.replace("/sendonce/", ""))
    assert "--stack-name sendonce" not in DOCS


def test_queue_and_alarm_counts(template: dict[str, Any]) -> None:
    queues = resources_of(template, "AWS::SQS::Queue")
    functions = resources_of(template, "AWS::Serverless::Function")
    row = table_row(f"Queues ({len(queues)})")
    assert f"`<Function>FailureDLQ` x{len(functions)}" in row
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    row = table_row(f"Alarms ({len(alarms)})")
    named = set(re.findall(r"`(\w+Alarm)`", row))
    per_queue = {a for a in alarms if a.endswith("DLQAlarm") or a == "FailedMessagesAlarm"}
    assert named == set(alarms) - per_queue
    assert len(per_queue) == len(queues)


def test_every_alarm_has_a_first_look(template: dict[str, Any]) -> None:
    alarm_table = DOCS.split("| Alarm | Fires when | First look |", 1)[1].split("\n\n", 1)[0]
    for logical_id in resources_of(template, "AWS::CloudWatch::Alarm"):
        generic = (
            logical_id.replace(logical_id.split("FailureDLQ")[0], "<Function>")
            if "FailureDLQ" in logical_id
            else None
        )
        assert f"`{logical_id}`" in alarm_table or (generic and f"`{generic}`" in alarm_table), logical_id


def test_connection_budget_uses_the_templates_figures(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    dispatchers = (
        params["DispatcherReservedConcurrency"]["Default"] * params["DispatcherDbPoolMaxSize"]["Default"]
    )
    webhooks = params["WebhookReservedConcurrency"]["Default"] * 2
    enqueues = params["EnqueueReservedConcurrency"]["Default"] * 2
    control = template["Resources"]["ControlFunction"]["Properties"]["ReservedConcurrentExecutions"] * 2
    total = dispatchers + webhooks + enqueues + control + 2 + 1
    assert re.search(rf"total\s+{total}\b", DOCS)
    assert f"({total} with the defaults)" in FLAT
    assert f"{params['RdsProxyMaxConnectionsPercent']['Default']}% x max_connections" in DOCS


def test_guide_deploys_with_make_deploy() -> None:
    assert "make deploy" in DOCS
    assert "WebhookFunction has no authentication. Is this okay? [y/N]" in DOCS
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^deploy: .*##", makefile, flags=re.MULTILINE)
