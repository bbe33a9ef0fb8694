"""Migrate: apply pending schema migrations. Idempotent; run after every deploy."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.events import MigrateRequest, parse_event
from shared.observability import logger
from shared.runtime import database, settings
from shared.storage.migrate import migrate

settings()  # validate configuration at cold start


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(MigrateRequest, event)
    report = migrate(database(), dry_run=request.dry_run)
    logger.info("migrations", extra={"applied": report.applied, "dry_run": request.dry_run})
    return {"applied": report.applied, "already_applied": report.already_applied, "dry_run": request.dry_run}
