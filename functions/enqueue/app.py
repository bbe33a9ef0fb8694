"""Enqueue: start or extend a campaign. Safe to repeat and to race with itself."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.enqueue import enqueue_campaign
from shared.events import EnqueueRequest, parse_event
from shared.observability import logger, tracer
from shared.runtime import database, settings
from shared.sequences import EngineConfig

settings()  # validate configuration at cold start


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)  # responses name contacts
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(EnqueueRequest, event)
    config = EngineConfig.from_settings(settings())
    return enqueue_campaign(database(), request, config=config).model_dump(mode="json")
