"""Control: one operator command per event (campaign create/start/pause/resume/cancel,
stop a contact, sender pause/resume/configure), the same library functions the CLI calls."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.campaigns import run_control_command
from shared.events import ControlRequest, parse_event
from shared.observability import logger, tracer
from shared.runtime import database, settings

settings()  # validate configuration at cold start


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(ControlRequest, event)
    return run_control_command(database(), settings(), request.root).model_dump(mode="json")
