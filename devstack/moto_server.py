"""moto's server, one request at a time: ``python -m devstack.moto_server -p PORT``.

DynamoDB applies a conditional write atomically; moto reads the current item, evaluates the
condition and stores the new item as separate Python steps (``moto/dynamodb/models/table.py``
``Table.put_item``), and its threaded server runs requests concurrently. Two racing
conditional puts can then both succeed, which no real table allows and which the gate in
front of every provider call relies on. Serialising requests restores DynamoDB's atomicity
for the tests and the local stack; connections stay concurrent (keep-alive), only the
handling of each request is exclusive.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serialised(app: Wsgi) -> Wsgi:
    lock = threading.Lock()

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            result = app(environ, start_response)
            try:
                body = b"".join(result)  # the whole answer is produced under the lock
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return [body]

    return handle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialised(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
