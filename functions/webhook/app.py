"""Webhook: the public Function URL providers call with delivery statuses and messages.

Routes only; authentication, parsing and storage live in ``shared.webhooks``.
"""

from typing import Any

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.observability import logger, metrics, tracer
from shared.providers.outcome import Channel
from shared.runtime import settings, webhook_deps
from shared.webhooks import WebhookResult, handle_request, verify_subscription

settings()  # validate configuration at cold start

app = LambdaFunctionUrlResolver()


def _response(result: WebhookResult) -> Response[str]:
    return Response(status_code=result.status_code, content_type=result.content_type, body=result.body)


def _receive(channel: Channel) -> Response[str]:
    event = app.current_event
    return _response(
        handle_request(webhook_deps(), channel, event.headers, event.body, bool(event.is_base64_encoded))
    )


@app.post("/webhooks/whatsapp")
def whatsapp() -> Response[str]:
    return _receive(Channel.WHATSAPP)


@app.post("/webhooks/messenger")
def messenger() -> Response[str]:
    return _receive(Channel.MESSENGER)


@app.post("/webhooks/unipile")
def unipile() -> Response[str]:
    return _receive(Channel.LINKEDIN)


@app.get("/webhooks/whatsapp")
@app.get("/webhooks/messenger")
def subscribe() -> Response[str]:
    return _response(verify_subscription(webhook_deps().secrets, app.current_event.query_string_parameters))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)  # responses name contacts
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
