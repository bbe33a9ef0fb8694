"""Dispatcher: fired every minute by EventBridge Scheduler; invocations overlap by design."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.dispatch import dispatch
from shared.events import DispatchRequest, parse_event
from shared.observability import logger, metrics, tracer
from shared.runtime import dispatch_deps, settings

settings()  # validate configuration at cold start


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(DispatchRequest, event)
    return dispatch(dispatch_deps(), request, context).model_dump(mode="json")
