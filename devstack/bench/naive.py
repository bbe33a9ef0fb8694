"""The naive sender the dispatcher is benchmarked against, in its own OS process like a
dispatcher: N threads, each ``SELECT ... FOR UPDATE SKIP LOCKED`` one pending row, call the
provider through the same adapter and HTTP client the dispatcher uses, ``UPDATE`` the row,
commit. No lease, no idempotency record, no pacing: a crash between the call and the commit
sends the row again. It is what "safety for free" is measured against, never a way to send.

``python -m devstack.bench.naive --threads 8`` with the stack's environment; prints one JSON
line with what it sent.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter

from shared.providers.outcome import OutboundMessage, OutcomeKind
from shared.providers.registry import build_adapters, make_http_client
from shared.providers.secrets import TokenSource
from shared.runtime import build_database, settings
from shared.storage import sql


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    config = settings()
    db = build_database(config.model_copy(update={"db_pool_max_size": max(args.threads, 1)}))
    adapters = build_adapters(config, make_http_client(config), TokenSource(config))
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with db.connection() as conn, conn.transaction():
                row = conn.execute(sql.NAIVE_LOCK_NEXT).fetchone()
                if row is None:
                    return
                message = OutboundMessage(**row)
                outcome = adapters[message.channel].send(message)
                if outcome.kind is OutcomeKind.SENT:
                    conn.execute(
                        sql.NAIVE_MARK_SENT,
                        {"queue_id": message.queue_id, "provider_message_id": outcome.provider_message_id},
                    )
                else:
                    conn.execute(
                        sql.NAIVE_MARK_FAILED, {"queue_id": message.queue_id, "reason": outcome.reason}
                    )
            with lock:
                counts[outcome.kind.value] += 1

    threads = [threading.Thread(target=worker, name=f"naive-{n}") for n in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.close()
    print(json.dumps({"counts": dict(counts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
