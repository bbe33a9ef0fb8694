"""template.yaml, its packaging and the sample events, checked against the code they deploy.

The checks tie the template to the library: every SENDONCE_* variable must be a Settings
field, the template's default environment must pass Settings' own validation, the dispatcher's
Timeout and the lease arithmetic's input must be one value, and every sample event must
validate against the model its handler uses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from devstack.aws import TEST_SECRETS
from devstack.bench.throughput import DISPATCHER_MEMORY_MB
from shared.config import Settings
from shared.events import (
    ContactImportEvent,
    ControlRequest,
    DispatchRequest,
    EnqueueRequest,
    MigrateEvent,
    SweepRequest,
)
from shared.storage.migrate import required_version

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"

EVENTS_DIR = ROOT / "events"
FUNCTIONS = {
    "DispatcherFunction": "dispatcher",
    "SweeperFunction": "sweeper",
    "WebhookFunction": "webhook",
    "EnqueueFunction": "enqueue",
    "MigrateFunction": "migrate",
    "ControlFunction": "control",
    "ContactsFunction": "contacts",
}
SCHEDULED: dict[str, type[BaseModel]] = {
    "DispatcherFunction": DispatchRequest,
    "SweeperFunction": SweepRequest,
}
EVENT_MODELS: dict[str, type[BaseModel]] = {
    "dispatcher": DispatchRequest,
    "sweeper": SweepRequest,
    "enqueue": EnqueueRequest,
    "migrate": MigrateEvent,
    "control": ControlRequest,
    "contacts": ContactImportEvent,
}
TEST_META_APP_SECRET = b"test-meta-app-secret"
TEST_UNIPILE_WEBHOOK_SECRET = "test-unipile-webhook-secret"
# Each negative example must fail for the reasons it was written for, not for some other one.
INVALID_EVENT_ERRORS: dict[str, set[tuple[str, str]]] = {
    "dispatcher-malformed.json": {("source", "literal_error"), ("batch_size", "int_parsing")},
    "enqueue-malformed.json": {("contacts", "missing"), ("campaign_id", "uuid_parsing")},
    "enqueue-nul-byte.json": {("campaign_name", "value_error"), ("contacts", "value_error")},
    "enqueue-bad-region.json": {("sender_default_region", "value_error")},
    # A command's errors are located under its tag.
    "control-malformed.json": {("campaign.pause", "uuid_parsing"), ("campaign.pause", "missing")},
}
REQUIRED_ENV = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "SENDONCE_IDEMPOTENCY_TABLE",
    "SENDONCE_DATABASE_SECRET_ID",
    "SENDONCE_DISPATCHER_TIMEOUT_SECONDS",
    "SENDONCE_SWEEPER_TIMEOUT_SECONDS",
    "SENDONCE_DEDUPE_WINDOW_SECONDS",
    "SENDONCE_FAILED_MESSAGES_QUEUE_URL",
    "SENDONCE_WHATSAPP_TOKEN_SECRET_ID",
    "SENDONCE_MESSENGER_TOKEN_SECRET_ID",
    "SENDONCE_UNIPILE_API_KEY_SECRET_ID",
    "SENDONCE_META_APP_SECRET_ID",
    "SENDONCE_META_VERIFY_TOKEN_SECRET_ID",
    "SENDONCE_UNIPILE_WEBHOOK_SECRET_ID",
    "SENDONCE_GRAPH_API_BASE_URL",
    "SENDONCE_GRAPH_API_VERSION",
    "SENDONCE_UNIPILE_BASE_URL",
}
# Secrets each function may read, by the logical id (or parameter) that names them.
ALLOWED_SECRETS = {
    "DispatcherFunction": {
        "DatabaseUrlSecretArn",
        "WhatsAppTokenSecret",
        "MessengerTokenSecret",
        "UnipileApiKeySecret",
    },
    # Unipile: reading a LinkedIn chat back. WhatsApp: listing the configured WABAs' templates.
    "SweeperFunction": {"DatabaseUrlSecretArn", "UnipileApiKeySecret", "WhatsAppTokenSecret"},
    "WebhookFunction": {
        "DatabaseUrlSecretArn",
        "MetaAppSecret",
        "MetaVerifyTokenSecret",
        "UnipileWebhookSecret",
    },
    "EnqueueFunction": {"DatabaseUrlSecretArn"},
    "MigrateFunction": {"DatabaseUrlSecretArn"},
    "ControlFunction": {"DatabaseUrlSecretArn"},
    "ContactsFunction": {"DatabaseUrlSecretArn"},
}
CUSTOM_METRIC_ALARMS = {
    "UnknownRows",
    "StaleOwnedRows",
    "DuplicateSuspected",
    "LeaseLostAfterSend",
    "IdempotencyStoreUnavailable",
    "ProviderPausedSenders",
    "SettleErrors",
    "OldestDuePendingAgeSeconds",
}
# Alarms whose threshold is a parameter, not "any at all".
THRESHOLD_PARAMETERS = {"OldestDuePendingAgeSeconds": "BacklogAgeAlarmSeconds"}


# --- helpers ---------------------------------------------------------------------------------


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == type_}


def function_prop(template: dict[str, Any], logical_id: str, name: str) -> Any:
    """A function property as deployed: its own value, else the Globals one."""
    props = template["Resources"][logical_id]["Properties"]
    if name in props:
        return props[name]
    return template.get("Globals", {}).get("Function", {}).get(name)


def function_env(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """Globals variables overlaid with the function's own, as SAM merges them."""
    env = dict(template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    env.update(template["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {}))
    return env


def resolve(template: dict[str, Any], expr: Any) -> Any:
    """Literal value of an expression under parameter defaults; other references become
    `<LogicalId>` strings (enough for values that are only passed through)."""
    if isinstance(expr, dict) and set(expr) == {"Ref"}:
        name = expr["Ref"]
        param = template.get("Parameters", {}).get(name)
        if param is not None:
            return param.get("Default", f"<{name}>")
        return f"<{name}>"
    if isinstance(expr, dict) and set(expr) == {"Fn::GetAtt"}:
        return "<{}.{}>".format(*expr["Fn::GetAtt"])
    if isinstance(expr, dict) and set(expr) == {"Fn::Sub"} and isinstance(expr["Fn::Sub"], str):
        return re.sub(r"\$\{([^}]+)\}", lambda m: f"<{m.group(1)}>", expr["Fn::Sub"])
    if isinstance(expr, dict) and set(expr) == {"Fn::If"}:
        name, when_true, when_false = expr["Fn::If"]
        return resolve(template, when_true if condition(template, name) else when_false)
    return expr


def condition(template: dict[str, Any], name: str) -> bool:
    """A condition's value under the parameter defaults."""

    def evaluate(expr: Any) -> Any:
        if isinstance(expr, dict) and len(expr) == 1:
            [(op, arg)] = expr.items()
            if op == "Condition":
                return evaluate(template["Conditions"][arg])
            if op == "Fn::Equals":
                return evaluate(arg[0]) == evaluate(arg[1])
            if op == "Fn::Not":
                return not evaluate(arg[0])
            if op == "Fn::And":
                return all(evaluate(a) for a in arg)
            if op == "Fn::Or":
                return any(evaluate(a) for a in arg)
            if op == "Fn::Join":
                return arg[0].join(str(v) for v in as_list(evaluate(arg[1])))
        return resolve(template, expr)

    return bool(evaluate(template["Conditions"][name]))


def resolve_int(template: dict[str, Any], expr: Any) -> int:
    value = resolve(template, expr)
    assert not (isinstance(value, str) and value.startswith("<")), f"{expr} has no default value"
    return int(value)


def getatt_target(template: dict[str, Any], expr: Any, attribute: str) -> str:
    assert isinstance(expr, dict), f"expected !GetAtt X.{attribute}, got {expr}"
    assert "Fn::GetAtt" in expr, f"expected !GetAtt X.{attribute}, got {expr}"
    logical_id, attr = expr["Fn::GetAtt"]
    assert attr == attribute, f"expected attribute {attribute}, got {attr}"
    assert logical_id in template["Resources"], f"{logical_id} is not a resource"
    return str(logical_id)


def rate_seconds(expression: str) -> int:
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours)\)", expression)
    assert match, f"not a rate() expression: {expression}"
    return int(match.group(1)) * (60 if match.group(2).startswith("minute") else 3600)


def statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in template["Resources"][logical_id]["Properties"].get("Policies", []):
        assert isinstance(policy, dict), f"{logical_id}: use inline statements, got {policy}"
        assert "Statement" in policy, f"{logical_id}: use inline statements, got {policy}"
        out.extend(policy["Statement"])
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ref_name(expr: Any) -> str:
    assert isinstance(expr, dict), f"expected !Ref, got {expr}"
    assert set(expr) == {"Ref"}, f"expected !Ref, got {expr}"
    return str(expr["Ref"])


def event_files() -> list[Path]:
    # env.json is the environment for `sam local invoke --env-vars`, not an event.
    return sorted(p for p in EVENTS_DIR.glob("*.json") if p.name != "env.json")


def model_for(path: Path) -> type[BaseModel]:
    prefix = path.name.split("-", 1)[0].removesuffix(".json")
    assert prefix in EVENT_MODELS, f"{path.name}: no model for prefix {prefix!r}"
    return EVENT_MODELS[prefix]


# --- tools -----------------------------------------------------------------------------------


def test_cfn_lint_passes(cfn_lint_bin: str, tool_env: dict[str, str]) -> None:
    result = subprocess.run(
        [cfn_lint_bin, str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        env=tool_env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint:\n{result.stdout}\n{result.stderr}"


def test_sam_validate_lint_passes(sam_bin: str, tool_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sam_bin, "validate", "--lint", "--template", str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        env=tool_env,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"sam validate --lint:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sam_bin: str, tool_env: dict[str, str]) -> Path:
    """`sam build` into a temporary directory (needs PyPI for the layer)."""
    build_dir = tmp_path_factory.mktemp("sam-build")
    result = subprocess.run(
        [sam_bin, "build", "--build-dir", str(build_dir), "--template", str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        env=tool_env,
        cwd=ROOT,
        check=False,
        timeout=540,
    )
    assert result.returncode == 0, f"sam build:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return build_dir


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_build_packages_handler_and_shared_library(built: Path, logical_id: str) -> None:
    artifact = built / logical_id
    assert (artifact / "app.py").is_file(), f"{logical_id}: app.py missing from the build"
    shared = artifact / "shared"
    assert shared.is_dir(), f"{logical_id}: shared/ missing from the build"
    assert not shared.is_symlink(), f"{logical_id}: shared/ must be copied, not linked"
    source_modules = {p.relative_to(ROOT / "shared") for p in (ROOT / "shared").rglob("*.py")}
    assert source_modules, "shared/ has no modules"
    built_modules = {p.relative_to(shared) for p in shared.rglob("*.py")}
    missing = source_modules - built_modules
    assert not missing, f"{logical_id}: modules missing from the build: {sorted(map(str, missing))}"
    migrations = {p.name for p in (ROOT / "shared" / "storage" / "migrations").glob("*.sql")}
    built_migrations = {p.name for p in (shared / "storage" / "migrations").glob("*.sql")}
    assert migrations <= built_migrations, f"{logical_id}: SQL migrations missing from the build"


def test_build_layer_has_linux_x86_64_py312_dependencies(built: Path, template: dict[str, Any]) -> None:
    layers = resources_of(template, "AWS::Serverless::LayerVersion")
    assert set(layers) == {"DependenciesLayer"}
    python = built / "DependenciesLayer" / "python"
    for package in (
        "psycopg",
        "psycopg_pool",
        "aws_lambda_powertools",
        "pydantic",
        "pydantic_settings",
        "httpx",
        "phonenumbers",
    ):
        assert (python / package).is_dir(), f"layer lacks {package}"
    # psycopg needs libpq at runtime; only the binary wheel brings it to Lambda.
    for package in ("psycopg_binary", "pydantic_core"):
        extensions = list((python / package).glob("*.so"))
        assert extensions, f"layer lacks the compiled {package}"
        assert all("cpython-312-x86_64-linux-gnu" in so.name for so in extensions), (
            f"{package} was not built for Lambda python3.12 x86_64: {[so.name for so in extensions]}"
        )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_build_layer_holds_exactly_the_locked_packages(built: Path) -> None:
    """The layer is built from the lock, and nothing else: every package at its locked version
    (and so with its locked hash, which pip checks while building)."""
    lock = (ROOT / "layers" / "deps" / "requirements.txt").read_text()
    locked = {
        (_canonical(name), version)
        for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", lock, flags=re.MULTILINE)
    }
    assert locked and lock.count("--hash=sha256:") >= len(locked), "every locked package carries its hashes"
    installed = {
        (
            _canonical(info.name.removesuffix(".dist-info").rsplit("-", 1)[0]),
            info.name.removesuffix(".dist-info").rsplit("-", 1)[1],
        )
        for info in (built / "DependenciesLayer" / "python").glob("*.dist-info")
    }
    assert installed == locked, (
        f"not locked: {sorted(installed - locked)}; missing: {sorted(locked - installed)}"
    )


def test_build_layer_carries_the_ca_bundle_where_the_functions_look(
    built: Path, template: dict[str, Any]
) -> None:
    """The bundle itself is fetched by `make rds-ca` (pinned hashes), so a test build holds
    its pin file: it lands in the directory SENDONCE_DB_TLS_CA_BUNDLE names, under /opt."""
    bundle = Path(template["Globals"]["Function"]["Environment"]["Variables"]["SENDONCE_DB_TLS_CA_BUNDLE"])
    in_build = built / "DependenciesLayer" / bundle.parent.relative_to("/opt")
    assert (in_build / "PIN").is_file(), f"{in_build} has no PIN: the bundle would not be at {bundle}"
    built_here = ROOT / "layers" / "deps" / "rds-ca" / bundle.name
    if built_here.is_file():  # after `make rds-ca` (a clean clone has only the PIN)
        assert (in_build / bundle.name).read_bytes() == built_here.read_bytes()


# --- functions -------------------------------------------------------------------------------


def test_template_functions_match_function_directories(template: dict[str, Any]) -> None:
    functions = resources_of(template, "AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    code_dirs = {p.name for p in (ROOT / "functions").iterdir() if p.is_dir()}
    assert code_dirs == set(FUNCTIONS.values()), f"functions/ has {sorted(code_dirs)}"
    for logical_id, name in FUNCTIONS.items():
        assert functions[logical_id]["Properties"]["CodeUri"].rstrip("/") == f"functions/{name}"
        assert function_prop(template, logical_id, "Handler") == "app.lambda_handler"
        link = ROOT / "functions" / name / "shared"
        assert link.is_symlink(), f"{link} must be a symlink to the shared library"
        assert not Path(link.readlink()).is_absolute(), f"{link} must be relative to work in any checkout"
        assert link.resolve() == (ROOT / "shared").resolve()


def test_runtime_architecture_and_layer_agree(template: dict[str, Any]) -> None:
    layer = template["Resources"]["DependenciesLayer"]
    assert layer["Properties"]["ContentUri"].rstrip("/") == "layers/deps"
    for logical_id in FUNCTIONS:
        runtime = function_prop(template, logical_id, "Runtime")
        match = re.fullmatch(r"python3\.(\d+)", runtime)
        assert match, f"{logical_id}: runtime {runtime}"
        assert int(match.group(1)) >= 12, f"{logical_id}: runtime {runtime}"
        assert runtime in layer["Properties"]["CompatibleRuntimes"]
        assert layer["Metadata"]["BuildMethod"] == runtime, "layer built for another Python than it runs on"
        assert function_prop(template, logical_id, "Architectures") == ["x86_64"]
        assert function_prop(template, logical_id, "Layers") == [{"Ref": "DependenciesLayer"}]
    assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64"]


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_function_has_timeout_concurrency_and_own_failure_queue(
    template: dict[str, Any], logical_id: str
) -> None:
    props = template["Resources"][logical_id]["Properties"]
    timeout = resolve_int(template, props["Timeout"])
    assert 1 <= timeout <= 900
    assert resolve_int(template, props["ReservedConcurrentExecutions"]) >= 1
    on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    queue = getatt_target(template, on_failure["Destination"], "Arn")
    assert template["Resources"][queue]["Type"] == "AWS::SQS::Queue"
    others = {
        getatt_target(
            template,
            r["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"],
            "Arn",
        )
        for lid, r in resources_of(template, "AWS::Serverless::Function").items()
        if lid != logical_id
    }
    assert queue not in others, f"{logical_id} shares its failure queue {queue}"


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_function_policies_are_scoped(template: dict[str, Any], logical_id: str) -> None:
    secrets: set[str] = set()
    dynamodb_actions: set[str] = set()
    sqs_targets: set[str] = set()
    for statement in statements(template, logical_id):
        assert statement["Effect"] == "Allow"
        actions = as_list(statement["Action"])
        resources = as_list(statement["Resource"])
        assert all("*" not in action for action in actions), f"{logical_id}: wildcard action {actions}"
        assert all(resource != "*" for resource in resources), f"{logical_id}: Resource '*'"
        for action in actions:
            service = action.split(":", 1)[0]
            if action == "secretsmanager:GetSecretValue":
                secrets |= {ref_name(r) for r in resources}
            elif service == "dynamodb":
                dynamodb_actions.add(action)
                assert [getatt_target(template, r, "Arn") for r in resources] == ["IdempotencyTable"]
            elif action == "sqs:SendMessage":
                sqs_targets |= {getatt_target(template, r, "Arn") for r in resources}
            elif action == "s3:GetObject" and logical_id == "ContactsFunction":
                # Only the import folder of the import bucket.
                assert resources == [
                    {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ContactImportBucketName}/contacts/*"}
                ]
            else:
                pytest.fail(f"{logical_id}: unexpected action {action}")
    assert secrets == ALLOWED_SECRETS[logical_id]
    expected_dynamodb = {
        "DispatcherFunction": {
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        },
        "SweeperFunction": {"dynamodb:GetItem", "dynamodb:DeleteItem"},
    }.get(logical_id, set())
    assert dynamodb_actions == expected_dynamodb
    assert sqs_targets == ({"FailedMessagesQueue"} if logical_id == "SweeperFunction" else set())


@pytest.mark.parametrize("logical_id", sorted(SCHEDULED))
def test_schedule_has_dlq_no_retries_and_valid_input(template: dict[str, Any], logical_id: str) -> None:
    props = template["Resources"][logical_id]["Properties"]
    schedules = [e for e in props["Events"].values() if e["Type"] == "ScheduleV2"]
    assert len(schedules) == 1, f"{logical_id} needs exactly one ScheduleV2 event"
    schedule = schedules[0]["Properties"]
    assert schedule["RetryPolicy"]["MaximumRetryAttempts"] == 0
    dlq = getatt_target(template, schedule["DeadLetterConfig"]["Arn"], "Arn")
    assert template["Resources"][dlq]["Type"] == "AWS::SQS::Queue"
    failure_queue = getatt_target(
        template, props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"], "Arn"
    )
    assert dlq != failure_queue, "scheduler and invocation failures must be told apart"
    # Lambda must not retry a tick either: the next tick replaces it.
    assert props["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    assert "Name" in schedule, "schedule names are account-wide; name it after the stack"
    assert "${AWS::StackName}" in schedule["Name"]["Fn::Sub"]
    scheduled_input = json.loads(schedule["Input"])
    SCHEDULED[logical_id].model_validate(scheduled_input)
    sample = json.loads((EVENTS_DIR / f"{FUNCTIONS[logical_id]}-scheduled.json").read_text())
    assert scheduled_input == sample, "events/*-scheduled.json must be what the schedule sends"


@pytest.mark.parametrize(
    ("logical_id", "env_name"),
    [
        ("DispatcherFunction", "SENDONCE_DISPATCHER_TIMEOUT_SECONDS"),
        ("SweeperFunction", "SENDONCE_SWEEPER_TIMEOUT_SECONDS"),
    ],
)
def test_timeout_env_is_the_function_timeout(
    template: dict[str, Any], logical_id: str, env_name: str
) -> None:
    timeout = template["Resources"][logical_id]["Properties"]["Timeout"]
    # Same expression, not just equal defaults: a parameter override must move both.
    for function in FUNCTIONS:
        assert function_env(template, function)[env_name] == timeout, (
            f"{function}: {env_name} != {logical_id} Timeout"
        )
    assert resolve_int(template, function_env(template, logical_id)[env_name]) == resolve_int(
        template, timeout
    )


def test_dispatcher_timeout_exceeds_schedule_period(template: dict[str, Any]) -> None:
    props = template["Resources"]["DispatcherFunction"]["Properties"]
    (event,) = props["Events"].values()
    period = rate_seconds(event["Properties"]["ScheduleExpression"])
    assert period == 60
    assert resolve_int(template, props["Timeout"]) > period
    param = template["Parameters"][ref_name(props["Timeout"])]
    assert param["MinValue"] > period, "an override could make the dispatcher timeout shorter than its period"
    assert param["MaxValue"] <= 900


def test_dispatcher_timeout_bounds_agree_with_the_config_arithmetic(template: dict[str, Any]) -> None:
    """The template's lowest allowed timeout must start; one second less must not."""
    props = template["Resources"]["DispatcherFunction"]["Properties"]
    param = template["Parameters"][ref_name(props["Timeout"])]
    Settings(dispatcher_timeout_seconds=param["MinValue"])
    Settings(dispatcher_timeout_seconds=param["Default"])
    with pytest.raises(ValidationError):
        Settings(dispatcher_timeout_seconds=param["MinValue"] - 1)


def test_dispatcher_concurrency_covers_overlapping_ticks(template: dict[str, Any]) -> None:
    props = template["Resources"]["DispatcherFunction"]["Properties"]
    (event,) = props["Events"].values()
    period = rate_seconds(event["Properties"]["ScheduleExpression"])
    timeout = resolve_int(template, props["Timeout"])
    overlapping = -(-timeout // period)  # ceil
    assert resolve_int(template, props["ReservedConcurrentExecutions"]) > overlapping


# --- schema migration during the deploy -------------------------------------------------------


def test_the_bench_costs_the_dispatcher_at_its_deployed_memory(template: dict[str, Any]) -> None:
    """make bench prices Lambda GB-seconds at the dispatcher's MemorySize; docs/scale.md
    derives that size from the bench's CPU per message."""
    assert function_prop(template, "DispatcherFunction", "MemorySize") == DISPATCHER_MEMORY_MB


def test_schema_migration_is_a_custom_resource_of_the_migrate_function(template: dict[str, Any]) -> None:
    resource = template["Resources"]["SchemaMigration"]
    assert resource["Type"] in {"Custom::Migrate", "AWS::CloudFormation::CustomResource"}
    props = resource["Properties"]
    assert getatt_target(template, props["ServiceToken"], "Arn") == "MigrateFunction"
    migrate_timeout = resolve_int(template, template["Resources"]["MigrateFunction"]["Properties"]["Timeout"])
    # A wait bounded below CloudFormation's one-hour default, yet longer than a run can take.
    assert migrate_timeout < props["ServiceTimeout"] < 3600


def test_schema_version_names_the_newest_migration(template: dict[str, Any]) -> None:
    """CloudFormation invokes the migrate function only when a property changes: a deploy
    that adds a migration must change this one, or the migration never runs."""
    assert template["Resources"]["SchemaMigration"]["Properties"]["SchemaVersion"] == required_version()


def test_every_function_that_uses_the_schema_waits_for_the_migration(template: dict[str, Any]) -> None:
    for logical_id in FUNCTIONS:
        depends_on = as_list(template["Resources"][logical_id].get("DependsOn", []))
        if logical_id == "MigrateFunction":
            assert "SchemaMigration" not in depends_on, "the migration needs the function first"
        else:
            assert "SchemaMigration" in depends_on, f"{logical_id} could run before its schema exists"


def _dependencies(resources: dict[str, Any], logical_id: str) -> set[str]:
    """Every resource CloudFormation creates before this one: DependsOn, Ref and GetAtt,
    followed transitively."""
    found: set[str] = set()
    pending = [logical_id]
    while pending:
        resource = resources[pending.pop()]
        direct = set(as_list(resource.get("DependsOn", [])))
        text = json.dumps(resource.get("Properties", {}))
        direct |= set(re.findall(r'\{"Ref": "([A-Za-z0-9]+)"\}', text))
        direct |= set(re.findall(r'\{"Fn::GetAtt": \["([A-Za-z0-9]+)"', text))
        for name in (direct & set(resources)) - found:
            found.add(name)
            pending.append(name)
    return found


def test_schedules_start_only_after_the_migration(expanded_template: dict[str, Any]) -> None:
    """SAM generates the schedules (it passes no DependsOn to them); each targets its function,
    which DependsOn the migration, so no tick can fire before the schema exists."""
    resources = expanded_template["Resources"]
    schedules = resources_of(expanded_template, "AWS::Scheduler::Schedule")
    assert set(schedules) == {"DispatcherFunctionTick", "SweeperFunctionTick"}
    for logical_id in schedules:
        assert "SchemaMigration" in _dependencies(resources, logical_id), logical_id
    assert "SchemaMigration" not in _dependencies(resources, "MigrateFunction")


# --- environment -----------------------------------------------------------------------------


def _settings_env_names() -> set[str]:
    names = {f"SENDONCE_{name.upper()}" for name in Settings.model_fields}
    names.add("DATABASE_URL")
    return names


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_environment_maps_to_settings(template: dict[str, Any], logical_id: str) -> None:
    env = function_env(template, logical_id)
    missing = REQUIRED_ENV - set(env)
    assert not missing, f"{logical_id} lacks {sorted(missing)}"
    unknown = {k for k in env if k.startswith("SENDONCE_") or k == "DATABASE_URL"} - _settings_env_names()
    assert not unknown, f"{logical_id}: {sorted(unknown)} are not Settings fields"
    assert not (set(env) - _settings_env_names() - {k for k in env if k.startswith("POWERTOOLS_")}), (
        f"{logical_id}: unexpected variables {sorted(set(env) - _settings_env_names())}"
    )
    assert "DATABASE_URL" not in env, "deployed stacks read the database URL from Secrets Manager"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "sendonce"
    assert env["SENDONCE_IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert env["SENDONCE_FAILED_MESSAGES_QUEUE_URL"] == {"Ref": "FailedMessagesQueue"}


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_default_environment_passes_settings_validation(
    template: dict[str, Any], logical_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("SENDONCE_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, expr in function_env(template, logical_id).items():
        monkeypatch.setenv(name, str(resolve(template, expr)))
    settings = Settings()
    params = template["Parameters"]
    assert settings.dispatcher_timeout_seconds == int(params["DispatcherTimeoutSeconds"]["Default"])
    assert settings.sweeper_timeout_seconds == int(params["SweeperTimeoutSeconds"]["Default"])
    assert settings.dedupe_window_seconds == int(params["DedupeWindowSeconds"]["Default"])


def test_database_secret_is_a_required_parameter(template: dict[str, Any]) -> None:
    param = template["Parameters"]["DatabaseUrlSecretArn"]
    assert "Default" not in param, "the database secret must be chosen at deploy time"
    assert re.fullmatch(
        param["AllowedPattern"], "arn:aws:secretsmanager:us-east-1:123456789012:secret:sendonce/db-AbCdEf"
    )
    assert not re.fullmatch(param["AllowedPattern"], "sendonce/db")


def test_created_secrets_hold_no_literal_value(template: dict[str, Any]) -> None:
    secrets = resources_of(template, "AWS::SecretsManager::Secret")
    assert set(secrets) == {
        "WhatsAppTokenSecret",
        "MessengerTokenSecret",
        "UnipileApiKeySecret",
        "MetaAppSecret",
        "MetaVerifyTokenSecret",
        "UnipileWebhookSecret",
    }
    for logical_id, secret in secrets.items():
        props = secret["Properties"]
        assert "SecretString" not in props, f"{logical_id} has a literal value"
        assert "GenerateSecretString" in props
        assert "KmsKeyId" not in props, f"{logical_id}: the roles can only decrypt with the AWS managed key"


# --- state -----------------------------------------------------------------------------------


def test_idempotency_table_layout(template: dict[str, Any]) -> None:
    table = template["Resources"]["IdempotencyTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True


def test_every_queue_is_encrypted_and_keeps_messages_14_days(template: dict[str, Any]) -> None:
    queues = resources_of(template, "AWS::SQS::Queue")
    assert {"FailedMessagesQueue", "DispatcherScheduleDLQ", "SweeperScheduleDLQ"} <= set(queues)
    for logical_id, queue in queues.items():
        props = queue.get("Properties", {})
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, (
            f"{logical_id} unencrypted"
        )
        assert props.get("MessageRetentionPeriod") == 14 * 24 * 3600, f"{logical_id} retention"


# --- alarms ----------------------------------------------------------------------------------


def test_every_queue_has_a_backlog_alarm(template: dict[str, Any]) -> None:
    alarmed: set[str] = set()
    for alarm in resources_of(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        if props.get("MetricName") != "ApproximateNumberOfMessagesVisible":
            continue
        assert props["Namespace"] == "AWS/SQS"
        assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0)
        (dimension,) = props["Dimensions"]
        assert dimension["Name"] == "QueueName"
        alarmed.add(getatt_target(template, dimension["Value"], "QueueName"))
    assert alarmed == set(resources_of(template, "AWS::SQS::Queue"))


def test_exactly_once_metric_alarms(template: dict[str, Any]) -> None:
    service = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    found: dict[str, dict[str, Any]] = {}
    for alarm in resources_of(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        if props.get("Namespace") == "sendonce":
            found[props["MetricName"]] = props
    assert set(found) == CUSTOM_METRIC_ALARMS
    for metric, props in found.items():
        assert props["Dimensions"] == [{"Name": "service", "Value": service}], f"{metric}: dimension"
        threshold = {"Ref": THRESHOLD_PARAMETERS[metric]} if metric in THRESHOLD_PARAMETERS else 0
        assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", threshold)
    for gauge in ("UnknownRows", "StaleOwnedRows", "ProviderPausedSenders", "OldestDuePendingAgeSeconds"):
        assert found[gauge]["Statistic"] == "Maximum", gauge


def test_lambda_metric_alarms(template: dict[str, Any]) -> None:
    """Sweeper errors (its scheduled runs are not retried), webhook errors and throttles (a
    Function URL has no DLQ: a failed or throttled callback exists only in the provider's retry)."""
    found = {
        (a["Properties"]["MetricName"], a["Properties"]["Dimensions"][0]["Value"]["Ref"])
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Namespace") == "AWS/Lambda"
    }
    assert found == {
        ("Errors", "SweeperFunction"),
        ("Errors", "WebhookFunction"),
        ("Throttles", "WebhookFunction"),
    }
    for alarm in resources_of(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        if props.get("Namespace") == "AWS/Lambda":
            assert (props["ComparisonOperator"], props["Threshold"], props["Statistic"]) == (
                "GreaterThanThreshold",
                0,
                "Sum",
            )


def test_every_alarm_notifies_a_topic(template: dict[str, Any]) -> None:
    """The given topic, else the one the stack creates: never nobody."""
    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    expected = [{"Fn::If": ["HasAlarmTopic", {"Ref": "AlarmTopicArn"}, {"Ref": "AlarmTopic"}]}]
    for logical_id, alarm in resources_of(template, "AWS::CloudWatch::Alarm").items():
        assert alarm["Properties"].get("AlarmActions") == expected, logical_id
        assert alarm["Properties"].get("OKActions") == expected, logical_id


# --- webhook, VPC, outputs -------------------------------------------------------------------


def test_webhook_is_a_public_function_url(template: dict[str, Any]) -> None:
    props = template["Resources"]["WebhookFunction"]["Properties"]
    assert props["FunctionUrlConfig"]["AuthType"] == "NONE"
    assert resolve_int(template, props["Timeout"]) <= 30
    assert template["Outputs"]["WebhookUrl"]["Value"] == {"Fn::GetAtt": ["WebhookFunctionUrl", "FunctionUrl"]}


def test_vpc_is_optional(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["VpcSubnetIds"]["Type"] == "CommaDelimitedList"
    assert params["VpcSubnetIds"]["Default"] == ""
    assert "UseVpc" in template["Conditions"]
    vpc = template["Globals"]["Function"]["VpcConfig"]["Fn::If"]
    assert vpc[0] == "UseVpc"
    assert vpc[1]["SubnetIds"] == {"Ref": "VpcSubnetIds"}
    assert vpc[2] == {"Ref": "AWS::NoValue"}


def test_outputs_name_every_function_queue_and_the_table(template: dict[str, Any]) -> None:
    values = [json.dumps(o["Value"], sort_keys=True) for o in template["Outputs"].values()]
    for logical_id in FUNCTIONS:
        assert json.dumps({"Fn::GetAtt": [logical_id, "Arn"]}, sort_keys=True) in values, logical_id
    for logical_id in [*resources_of(template, "AWS::SQS::Queue"), "IdempotencyTable"]:
        assert json.dumps({"Ref": logical_id}, sort_keys=True) in values, logical_id


# --- sample events ---------------------------------------------------------------------------


def test_every_function_has_sample_events() -> None:
    prefixes = {p.name.split("-", 1)[0].removesuffix(".json") for p in event_files()}
    assert prefixes == set(FUNCTIONS.values())


@pytest.mark.parametrize(
    "path", [p for p in event_files() if not p.name.startswith("webhook-")], ids=lambda p: p.name
)
def test_sample_event_validates(path: Path) -> None:
    model_for(path).model_validate(json.loads(path.read_text()))


def test_enqueue_sample_contains_a_duplicate_contact() -> None:
    request = EnqueueRequest.model_validate(json.loads((EVENTS_DIR / "enqueue-campaign.json").read_text()))
    raw = json.loads((EVENTS_DIR / "enqueue-campaign.json").read_text())["contacts"]
    addresses = [c.address for c in request.contacts]
    assert len(set(addresses)) < len(addresses), "the sample must exercise contact de-duplication"
    assert any(c["address"] != c["address"].strip() for c in raw), "one duplicate must need stripping"
    assert request.channel == "whatsapp"
    assert request.sender_provider_id == "106540352242922"
    assert len(request.steps) == 2


@pytest.mark.parametrize("path", sorted((EVENTS_DIR / "invalid").glob("*.json")), ids=lambda p: p.name)
def test_invalid_event_is_rejected_for_its_reasons(path: Path) -> None:
    assert path.name in INVALID_EVENT_ERRORS, f"{path.name}: declare which errors it must raise"
    with pytest.raises(ValidationError) as excinfo:
        model_for(path).model_validate(json.loads(path.read_text()))
    errors = {(str(e["loc"][0]), e["type"]) for e in excinfo.value.errors()}
    assert INVALID_EVENT_ERRORS[path.name] <= errors, f"{path.name}: got {errors}"
    message = str(excinfo.value)
    for field, _ in INVALID_EVENT_ERRORS[path.name]:
        assert field in message, f"the error message does not name {field}"


def test_there_are_invalid_examples() -> None:
    assert {p.name for p in (EVENTS_DIR / "invalid").glob("*.json")} == set(INVALID_EVENT_ERRORS)


WEBHOOK_SAMPLES = {
    "webhook-whatsapp-status.json": "/webhooks/whatsapp",
    "webhook-messenger-echo.json": "/webhooks/messenger",
    "webhook-unipile-message.json": "/webhooks/unipile",
}


SUBSCRIBE_SAMPLE = "webhook-subscribe-whatsapp.json"


def test_webhook_samples_are_the_expected_set() -> None:
    assert {p.name for p in event_files() if p.name.startswith("webhook-")} == {
        *WEBHOOK_SAMPLES,
        SUBSCRIBE_SAMPLE,
    }


def test_subscribe_sample_is_metas_get_check_with_the_test_verify_token() -> None:
    event = json.loads((EVENTS_DIR / SUBSCRIBE_SAMPLE).read_text())
    assert (event["version"], event["rawPath"]) == ("2.0", "/webhooks/whatsapp")
    assert event["requestContext"]["http"]["method"] == "GET"
    query = event["queryStringParameters"]
    assert query["hub.mode"] == "subscribe"
    assert query["hub.verify_token"] == TEST_SECRETS["meta_verify_token_secret_id"]
    assert query["hub.verify_token"] != TEST_META_APP_SECRET.decode()
    assert "body" not in event


@pytest.mark.parametrize(("name", "path"), sorted(WEBHOOK_SAMPLES.items()))
def test_webhook_sample_is_a_signed_function_url_v2_event(name: str, path: str) -> None:
    event = json.loads((EVENTS_DIR / name).read_text())
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == path
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["http"]["path"] == path
    assert event["isBase64Encoded"] is False
    headers = event["headers"]
    assert all(k == k.lower() for k in headers), "Function URLs deliver lower-case header names"
    body = event["body"]
    assert isinstance(body, str)
    payload = json.loads(body)
    if path == "/webhooks/unipile":
        assert hmac.compare_digest(headers["unipile-auth"], TEST_UNIPILE_WEBHOOK_SECRET)
        assert payload["event"] == "message_received"
        return
    expected = "sha256=" + hmac.new(TEST_META_APP_SECRET, body.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-hub-signature-256"], expected), f"{name}: stale signature"
    if path == "/webhooks/whatsapp":
        (status,) = payload["entry"][0]["changes"][0]["value"]["statuses"]
        assert status["status"] == "delivered"
        assert status["biz_opaque_callback_data"].startswith("so1-")
    else:
        (messaging,) = payload["entry"][0]["messaging"]
        assert messaging["message"]["is_echo"] is True
        assert messaging["message"]["metadata"].startswith("so1-")
