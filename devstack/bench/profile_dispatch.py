"""Profile the dispatcher's per-message work with cProfile: ``python -m
devstack.bench.profile_dispatch [--messages 300] [--top 35]``.

cProfile sees only the thread it runs on, so this runs the real dispatch path (claim, then
each row's ``sending`` / idempotency gate / provider call / settle) sequentially on the main
thread against a local stack (embedded Postgres, moto, the fake provider at 0 ms), with the
dependencies the handler builds (``shared.runtime.build_dispatch_deps``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import uuid

from devstack.lambda_context import LocalLambdaContext
from devstack.stack import LocalStack
from devstack.testing import enqueue_contacts
from shared import dispatch as dispatch_module
from shared.call_slots import CallGate
from shared.observability import Tally
from shared.runtime import build_database, build_dispatch_deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--filter", nargs="*", help="pstats restrictions (regexes) before --top")
    args = parser.parse_args(argv)
    with LocalStack() as stack:
        assert stack.settings is not None
        import os

        os.environ.update({k: v for k, v in stack.env().items() if k.startswith("AWS_")})
        deps = build_dispatch_deps(stack.settings, build_database(stack.settings, send_path=True))
        enqueue_contacts(stack.db, "whatsapp", [f"1555{i:07d}" for i in range(args.messages)], sender="p")
        context = LocalLambdaContext(function_name="profile", timeout_seconds=900)
        tally = Tally()
        paused = dispatch_module._PausedSenders()
        gate = CallGate(deps.queue.db, deps.sleep)
        token = uuid.uuid4()
        # CPU time, not wall time: waits on sockets are not the dispatcher's cost. The fake
        # provider serves from threads of this process; its frames (fake_provider, http.server)
        # are not the dispatcher's either.
        profiler = cProfile.Profile(time.process_time)
        done = 0
        profiler.enable()
        while claimed := deps.queue.claim_batch(token, 25, 600):
            for message in claimed:
                dispatch_module._deliver(deps, gate, message, context, tally, paused)
                done += 1
        profiler.disable()
        print(f"profiled {done} messages")
        stats = pstats.Stats(profiler)
        stats.sort_stats(args.sort).print_stats(*(args.filter or []), args.top)
        total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"own time per message: {total * 1000 / max(done, 1):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
