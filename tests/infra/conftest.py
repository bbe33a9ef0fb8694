"""Fixtures for the template and packaging checks.

The template is parsed in-process with PyYAML plus constructors for CloudFormation's short
tags (``!Ref`` becomes ``{"Ref": ...}``, ``!GetAtt A.B`` becomes ``{"Fn::GetAtt": [A, B]}``,
every other ``!X`` becomes ``{"Fn::X": ...}``), the same shape cfn-lint and SAM produce.
``cfn-lint`` and ``sam`` run as subprocesses from the tools venv (``make test-infra`` puts it
on PATH; ``.venv-tools/bin`` is the fallback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    pass


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    loaded = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    return loaded


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


def _find_tool(name: str, venv: str = ".venv-tools") -> str:
    local = ROOT / venv / "bin" / name
    found = shutil.which(name) or (str(local) if local.exists() else None)
    if found is None:
        pytest.fail(f"`{name}` not found on PATH or in .venv-tools/bin; run `make test-infra`")
    return found


@pytest.fixture(scope="session")
def cfn_lint_bin() -> str:
    return _find_tool("cfn-lint")


@pytest.fixture(scope="session")
def sam_bin() -> str:
    return _find_tool("sam")


@pytest.fixture(scope="session")
def checkov_bin() -> str:
    """checkov has a venv of its own (``make checkov``): its boto3 pin clashes with SAM CLI's."""
    local = ROOT / ".venv-checkov" / "bin" / "checkov"
    if local.exists():
        return str(local)
    return _find_tool("checkov", ".venv-checkov")


def python312_bin_dir() -> str:
    """Directory of the python3.12+ interpreter `sam build` needs (same search as the Makefile)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "find-python.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"no Python 3.12+ for sam build: {result.stderr.strip()}")
    return str(Path(result.stdout.strip()).parent)


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    """Environment for cfn-lint and sam: a fixed region and dummy credentials, so nothing
    reads a developer's real AWS profile, and no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        SAM_CLI_TELEMETRY="0",
    )
    env["PATH"] = os.pathsep.join([python312_bin_dir(), env.get("PATH", "")])
    return env


def tool_python(tool_bin: str) -> str:
    """The interpreter a console script runs under (its shebang): the venv that has the
    tool's libraries, wherever the script was found."""
    first_line = Path(tool_bin).read_text(errors="replace").splitlines()[0]
    assert first_line.startswith("#!"), f"{tool_bin} is not a script"
    return first_line[2:].strip().split()[0]


@pytest.fixture(scope="session")
def expanded_template(sam_bin: str, tool_env: dict[str, str]) -> dict[str, Any]:
    """template.yaml after SAM's transform (``scripts/sam_expand.py``): the generated roles,
    schedules and permissions exactly as CloudFormation receives them."""
    result = subprocess.run(
        [tool_python(sam_bin), str(ROOT / "scripts" / "sam_expand.py"), str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        env=tool_env,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"SAM transform failed:\n{result.stderr[-4000:]}"
    expanded: dict[str, Any] = json.loads(result.stdout)
    return expanded
