"""Contacts: import a CSV object from S3 into a campaign (an S3 ObjectCreated notification for
contacts/<campaign id>/<file>.csv, or an operator's event naming the object)."""

from typing import Any

import boto3
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.contacts_import import import_from_s3
from shared.events import ContactImportEvent, parse_event
from shared.observability import logger, tracer
from shared.runtime import database, settings
from shared.sequences import EngineConfig

settings()  # validate configuration at cold start


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_event(ContactImportEvent, event)
    config = EngineConfig.from_settings(settings())
    return import_from_s3(database(), boto3.client("s3"), request, config=config).model_dump(mode="json")
