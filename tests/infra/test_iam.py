"""Each function's role grants exactly the AWS operations its code makes.

Nothing missing: moto does not enforce IAM, so a call the role does not allow passes every
other suite and is denied only on AWS. Nothing extra: a grant no code path uses is either a
dead permission or a path no test exercises through a handler.

What the code makes is recorded, not declared. The integration and chaos suites run every
handler as a real process with the recorder on (``devstack/aws_calls.py``), which writes one
line per distinct (function, service, operation, resource) under ``build/aws-calls``; ``make
test`` clears that directory, then runs those suites before this one. What each role grants
is read from the template after SAM's transform (``scripts/sam_expand.py``), so the managed
policies and statements SAM adds on its own are checked too. The grants that serve AWS
rather than our code are listed below, each with its reason.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from devstack.aws_calls import CALLS_DIR_ENV

pytestmark = pytest.mark.infra

FUNCTIONS = {
    "dispatcher": "DispatcherFunction",
    "sweeper": "SweeperFunction",
    "webhook": "WebhookFunction",
    "enqueue": "EnqueueFunction",
    "migrate": "MigrateFunction",
    "control": "ControlFunction",
    "contacts": "ContactsFunction",
}
RECORDING_SUITES = ("integration", "chaos")

# The IAM service prefix of each SDK service the functions use. A new service fails the test
# until its prefix (and any action that is not named after its operation) is added here.
IAM_PREFIX = {"dynamodb": "dynamodb", "sqs": "sqs", "secretsmanager": "secretsmanager", "s3": "s3"}
# S3 objects are named by the event (an upload notification, or an operator's event), not by
# an environment variable: the role confines them to the import bucket's prefix, so a recorded
# object must lie under it, and it needs the grant on that prefix.
S3_OBJECT_GRANTS = {"ContactsFunction": ("ContactImportBucketName", "contacts/")}
# Operations authorised by another operation's action. SQS: "You cannot set permissions
# explicitly for SendMessageBatch ... setting permissions for SendMessage ... sets permissions
# for the corresponding batch versions" (Amazon SQS Developer Guide, "Amazon SQS batch
# actions", https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-batch-api.html).
ACTION_OF = {("sqs", "SendMessageBatch"): "sqs:SendMessage"}

# Managed policies SAM attaches to every function role, none of them for a call our code makes.
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": (
        "the Lambda service writes the function's logs to CloudWatch Logs with its role"
    ),
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": (
        "Tracing: Active; the Lambda runtime and Powertools Tracer send segments to X-Ray"
    ),
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole": (
        "VpcConfig is set in Globals (an Fn::If); Lambda manages the function's network "
        "interfaces with it when VpcSubnetIds is given (docs/deploy.md, Running in a VPC)"
    ),
}
# Grants for a path of library code that no test can reach, each with why it must stay. The
# test fails once such a call is recorded, so an entry cannot outlive its reason.
UNREACHED_BUT_NEEDED: dict[str, dict[Grant, str]] = {
    "DispatcherFunction": {
        ("dynamodb:GetItem", "IdempotencyTable"): (
            "Powertools reads the record with GetItem when a failed conditional put carries no "
            "item (idempotency/base.py: `exc.old_data_record or self._get_idempotency_record()`). "
            "DynamoDB and moto return it (ReturnValuesOnConditionCheckFailure=ALL_OLD), so no "
            "test gets there; without the grant that fallback would stall every message whose "
            "record exists (STORE_UNAVAILABLE, never sent)"
        ),
    },
}
FAILURE_DESTINATION_REASON = (
    "EventInvokeConfig OnFailure: the Lambda service sends a failed asynchronous invocation to "
    "the function's own failure queue with the function's role"
)

Grant = tuple[str, str]  # (IAM action, logical id of the resource or parameter)


# --- what the code does ----------------------------------------------------------------------


def recorded_calls() -> list[dict[str, Any]]:
    directory = Path(os.environ[CALLS_DIR_ENV])
    missing = [s for s in RECORDING_SUITES if not (directory / f"suite-{s}.json").exists()]
    if missing:
        pytest.fail(
            f"no recording of the AWS calls from the {' and '.join(missing)} suite(s) in {directory}: "
            "run the integration and chaos suites first (`make test` runs them before this one)"
        )
    failed = {
        s: note
        for s in RECORDING_SUITES
        if (note := json.loads((directory / f"suite-{s}.json").read_text()))["exitstatus"] != 0
    }
    assert not failed, f"the recording suites did not pass, so their recording may be partial: {failed}"
    return [
        json.loads(line)
        for path in sorted(directory.glob("calls-*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def deployed_env(expanded: dict[str, Any], logical_id: str) -> dict[str, Any]:
    variables: dict[str, Any] = expanded["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
    return variables


def needed_grants(expanded: dict[str, Any]) -> dict[str, set[Grant]]:
    """The grants each function's recorded calls need, with every resource resolved to the
    template resource the function's environment variable names (``!Ref Resource``)."""
    needed: dict[str, set[Grant]] = defaultdict(set)
    for call in recorded_calls():
        function, service, operation = call["function"], call["service"], call["operation"]
        assert function in FUNCTIONS, f"calls recorded for an unknown function: {call}"
        logical_id = FUNCTIONS[function]
        assert service in IAM_PREFIX, f"{function} calls {service}, which this test cannot map to IAM: {call}"
        action = ACTION_OF.get((service, operation), f"{IAM_PREFIX[service]}:{operation}")
        assert call["resources"], f"{function}: {service}.{operation} names no resource: {call}"
        if service == "s3":
            assert logical_id in S3_OBJECT_GRANTS, (
                f"{function} reads S3 objects, which its role cannot: {call}"
            )
            bucket_parameter, prefix = S3_OBJECT_GRANTS[logical_id]
            key = call["resources"].get("Key", "")
            assert key.startswith(prefix), (
                f"{function}: {operation} on {key!r}, outside {prefix}*: AWS would deny"
            )
            needed[logical_id].add((action, f"{bucket_parameter}/{prefix}*"))
            continue
        env = deployed_env(expanded, logical_id)
        for parameter, value in call["resources"].items():
            variables = call["configured_by"][parameter]
            assert variables, (
                f"{function}: {service}.{operation} on {parameter}={value}, which no environment "
                "variable names; a deployed function can only reach resources its template sets"
            )
            targets = set()
            for variable in variables:
                assert variable in env, (
                    f"{function} used {parameter}={value} from {variable}, which template.yaml "
                    f"does not set for {logical_id}"
                )
                targets.add(ref_target(env[variable], f"{logical_id} {variable}"))
            assert len(targets) == 1, f"{function}: {value} is ambiguous, named by {variables}"
            needed[logical_id].add((action, targets.pop()))
    return needed


# --- what the roles grant --------------------------------------------------------------------


def ref_target(expr: Any, where: str) -> str:
    """The logical id (or parameter) a resource expression names: ``!Ref X``, ``!GetAtt X.Arn``."""
    if isinstance(expr, dict) and set(expr) == {"Ref"}:
        return str(expr["Ref"])
    if isinstance(expr, dict) and set(expr) == {"Fn::GetAtt"} and expr["Fn::GetAtt"][1] == "Arn":
        return str(expr["Fn::GetAtt"][0])
    if isinstance(expr, dict) and set(expr) == {"Fn::Sub"} and isinstance(expr["Fn::Sub"], str):
        # Objects under a prefix of a bucket the stack names: "Parameter/prefix*".
        match = re.fullmatch(r"arn:\$\{AWS::Partition\}:s3:::\$\{(\w+)\}/([\w/-]*\*)", expr["Fn::Sub"])
        if match:
            return f"{match[1]}/{match[2]}"
    pytest.fail(f"{where}: {expr!r} names no single template resource (a wildcard or a literal ARN?)")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_of(expanded: dict[str, Any], logical_id: str) -> dict[str, Any]:
    role = expanded["Resources"][logical_id]["Properties"]["Role"]
    role_id = ref_target(role, f"{logical_id} Role")
    resource: dict[str, Any] = expanded["Resources"][role_id]
    assert resource["Type"] == "AWS::IAM::Role"
    return resource


def granted(expanded: dict[str, Any], logical_id: str) -> set[Grant]:
    grants: set[Grant] = set()
    for policy in role_of(expanded, logical_id)["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            where = f"{logical_id} {policy['PolicyName']} {statement.get('Sid', '')}".strip()
            assert statement["Effect"] == "Allow", where
            assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, (
                f"{where}: only plain Allow statements are checked here, got {sorted(statement)}"
            )
            for action in as_list(statement["Action"]):
                assert "*" not in action, f"{where}: wildcard action {action}"
                for resource in as_list(statement["Resource"]):
                    grants.add((action, ref_target(resource, where)))
    return grants


def allowed_extras(expanded: dict[str, Any], logical_id: str) -> set[Grant]:
    config = expanded["Resources"].get(f"{logical_id}EventInvokeConfig", {}).get("Properties", {})
    destination = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
    if destination is None:
        return set()
    return {("sqs:SendMessage", ref_target(destination, f"{logical_id} OnFailure"))}


# --- the checks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def needed(expanded_template: dict[str, Any]) -> dict[str, set[Grant]]:
    return needed_grants(expanded_template)


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS.values()))
def test_role_grants_exactly_what_the_function_calls(
    expanded_template: dict[str, Any], needed: dict[str, set[Grant]], logical_id: str
) -> None:
    grants = granted(expanded_template, logical_id)
    extras = allowed_extras(expanded_template, logical_id)
    unreached = set(UNREACHED_BUT_NEEDED.get(logical_id, {}))
    calls = needed.get(logical_id, set())
    missing = calls - grants
    unused = grants - extras - unreached - calls
    assert not missing, f"{logical_id} calls what its role does not allow; AWS would deny: {sorted(missing)}"
    assert not unused, (
        f"{logical_id}'s role allows what no recorded call uses: {sorted(unused)}. Remove the "
        "grant, or exercise the path through a handler process (tests/integration/test_handler_processes.py)"
    )
    assert extras <= grants, f"{logical_id}: {FAILURE_DESTINATION_REASON}; the grant is missing"
    assert unreached <= grants, f"{logical_id}: {UNREACHED_BUT_NEEDED[logical_id]}; the grant is missing"
    assert not unreached & calls, (
        f"{logical_id}: {sorted(unreached & calls)} is now recorded; drop it from UNREACHED_BUT_NEEDED"
    )


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS.values()))
def test_role_has_only_the_managed_policies_listed_with_a_reason(
    expanded_template: dict[str, Any], logical_id: str
) -> None:
    attached = set(role_of(expanded_template, logical_id)["Properties"].get("ManagedPolicyArns", []))
    assert attached <= set(ALLOWED_MANAGED_POLICIES), sorted(attached - set(ALLOWED_MANAGED_POLICIES))


def test_every_function_made_recorded_calls(needed: dict[str, set[Grant]]) -> None:
    """Every function reads at least its database secret; a function with no recorded call
    means its handler never ran as a process, and its role was checked against nothing."""
    assert set(needed) == set(FUNCTIONS.values())
