"""Migrate: apply pending schema migrations. Idempotent.

Runs on every deploy that ships a migration, as template.yaml's SchemaMigration custom
resource (a CloudFormation request, answered at its ResponseURL), and by hand with
``events/migrate.json``.
"""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.deploy import run_migrations
from shared.events import MigrateEvent, parse_event
from shared.observability import logger
from shared.runtime import database

# No configuration check at import, unlike the other handlers: a function that fails to start
# cannot answer CloudFormation, whose stack would then wait out the ServiceTimeout. A bad
# setting fails inside the request instead, and CloudFormation is told which.


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(MigrateEvent, event).root
    return run_migrations(request, database)
