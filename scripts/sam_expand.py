"""Print template.yaml as CloudFormation deploys it: SAM's transform applied, so every role
SAM generates appears with the managed policies and statements it really gets.

Runs in the tools venv (it needs ``samtranslator``, which aws-sam-cli brings):
``.venv-tools/bin/python scripts/sam_expand.py template.yaml``. Needs a region
(``AWS_DEFAULT_REGION``) for ARNs; it makes no AWS call. The local CodeUri paths are replaced
by placeholder S3 URIs, as ``sam validate`` does, because the transform only accepts those.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

# Values for the parameters that have no default; only their shape matters here.
REQUIRED_PARAMETERS = {
    "DatabaseUrlSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:sendonce/db-AbCdEf",
    "UnipileBaseUrl": "https://api1.unipile.com:13111",
}
CODE_PROPERTY = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}


class NoManagedPolicyNames:
    """The template names managed policies by ARN only, so no name needs looking up in IAM."""

    def load(self) -> dict[str, str]:
        return {}


def main(path: str) -> int:
    template: dict[str, Any] = yaml_parse(Path(path).read_text())
    for logical_id, resource in template["Resources"].items():
        code = CODE_PROPERTY.get(resource["Type"])
        if code:
            resource["Properties"][code] = f"s3://placeholder/{logical_id}"
    original = {lid: dict(r) for lid, r in template["Resources"].items()}
    expanded = transform(template, REQUIRED_PARAMETERS, NoManagedPolicyNames())
    carry_checkov_skips(original, expanded)
    json.dump(expanded, sys.stdout, indent=1, default=str)
    return 0


def carry_checkov_skips(original: dict[str, Any], expanded: dict[str, Any]) -> None:
    """SAM keeps a function's Metadata on the AWS::Lambda::Function only, not on what it
    generates from the function's properties (the AWS::Lambda::Url of FunctionUrlConfig). A
    checkov suppression written, with its reason, on the SAM resource in template.yaml applies
    to those generated resources too (SAM names them ``<LogicalId><Suffix>``)."""
    for logical_id, resource in expanded["Resources"].items():
        if logical_id in original or "Metadata" in resource:
            continue
        owners = [
            owner
            for owner, source in original.items()
            if logical_id.startswith(owner) and source["Type"].startswith("AWS::Serverless::")
        ]
        if not owners:
            continue
        owner = max(owners, key=len)
        skips = original[owner].get("Metadata", {}).get("checkov")
        if skips:
            resource["Metadata"] = {"checkov": skips}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
