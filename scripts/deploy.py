"""`make deploy`: a guided `sam deploy` the first time, a non-interactive one after.

"The first time" means: samconfig.toml has no saved ``parameter_overrides`` for the config
environment (``CONFIG_ENV``, default ``default``). The guided run asks for every parameter and
saves the answers there; those are ARNs, URLs and an email address, never a secret value (the
secrets themselves live in Secrets Manager, docs/deploy.md step 3).

Before a guided run this script states that the webhook is a public Function URL and why that
is safe, and asks for an explicit "yes" (or ``CONFIRM_PUBLIC_WEBHOOK=yes``); SAM then asks its
own "WebhookFunction has no authentication. Is this okay? [y/N]", whose default N aborts.

Standard library only: it runs under the tools venv's Python (``make deploy``), and the infra
tests import ``deploy_mode`` and ``sam_command`` from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PUBLIC_URL_NOTICE = (
    "The webhook is a public Lambda Function URL (AuthType NONE): WhatsApp, Messenger and "
    "Unipile cannot sign requests with AWS SigV4. It is safe because the function verifies "
    "every request before parsing it (Meta's X-Hub-Signature-256 HMAC with the app secret, "
    "Unipile's Unipile-Auth shared secret) and rejects the rest, and its reserved concurrency "
    "(WebhookReservedConcurrency) caps how much load even a flood of forged requests can put "
    "on Postgres."
)
SAM_AUTH_QUESTION = "WebhookFunction has no authentication. Is this okay? [y/N]"


def deploy_mode(samconfig: Path, config_env: str) -> str:
    """``guided`` until the config environment's deploy section holds saved parameter values."""
    if not samconfig.exists():
        return "guided"
    config = tomllib.loads(samconfig.read_text())
    deploy = config.get(config_env, {}).get("deploy", {}).get("parameters", {})
    return "non-interactive" if deploy.get("parameter_overrides") else "guided"


def sam_command(sam: str, mode: str, config_env: str) -> list[str]:
    if mode == "guided":
        return [sam, "deploy", "--guided", "--config-env", config_env]
    # samconfig's confirm_changeset protects a guided run; a repeat deploy from saved values
    # is meant to run unattended (CI), and an empty change set is not a failure.
    return [
        sam,
        "deploy",
        "--config-env",
        config_env,
        "--no-confirm-changeset",
        "--no-fail-on-empty-changeset",
    ]


def main() -> int:
    sam = os.environ.get("SAM", str(ROOT / ".venv-tools" / "bin" / "sam"))
    config_env = os.environ.get("CONFIG_ENV", "default")
    mode = deploy_mode(ROOT / "samconfig.toml", config_env)
    if mode == "guided":
        print(PUBLIC_URL_NOTICE, end="\n\n")
        answer = os.environ.get("CONFIRM_PUBLIC_WEBHOOK") or input(
            "Deploy the webhook as a public Function URL? Type yes: "
        )
        if answer.strip().lower() != "yes":
            print("Not deployed: the webhook URL was not confirmed.", file=sys.stderr)
            return 1
        print(f'\nSAM will ask "{SAM_AUTH_QUESTION}": answer y.')
        print(f"Save the answers (samconfig.toml, environment {config_env!r}); later runs reuse them.\n")
    else:
        print(f"Deploying with the values saved in samconfig.toml (environment {config_env!r}).")
    return subprocess.run(sam_command(sam, mode, config_env), cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
