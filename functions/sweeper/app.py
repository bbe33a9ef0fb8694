"""Sweeper: on its own schedule, gives every row with an expired lease a truthful state."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.events import SweepRequest, parse_event
from shared.observability import logger, metrics, tracer
from shared.runtime import settings, sweep_deps
from shared.sweeper import sweep

settings()  # validate configuration at cold start


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parse_event(SweepRequest, event)
    return sweep(sweep_deps()).model_dump(mode="json")
