"""``make bench``: every benchmark scenario, or the ones named.

    python -m devstack.bench                      # all scenarios
    python -m devstack.bench pacing fairness      # some
    python -m devstack.bench throughput --throughput-messages 5000 --dispatchers 1 4 8
    python -m devstack.bench throughput claim-scale --quick   # a short run
    python -m devstack.bench contact-import       # seed 002's 20,028 contacts from CSV

Each scenario prints its figures and a one-line summary that starts with its name, and writes
its results as JSON to bench-results/. The exit status is non-zero if any scenario missed a
target or saw a duplicate.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

from devstack.bench import absence, claim_scale, contact_import, fairness, pacing, throughput
from devstack.bench.common import console

SCENARIOS: dict[str, ModuleType] = {
    "throughput": throughput,
    "pacing": pacing,
    "fairness": fairness,
    "claim-scale": claim_scale,
    "absence": absence,
    "contact-import": contact_import,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *SCENARIOS],
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: throughput 300 messages a run, claim-scale 10k/50k rows",
    )
    for module in SCENARIOS.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    chosen = args.scenarios or list(SCENARIOS)
    failures = []
    for name in chosen:
        console.rule(name)
        run: Callable[[argparse.Namespace], int] = SCENARIOS[name].run
        if run(args) != 0:
            failures.append(name)
    if failures:
        console.print(f"[red]missed targets or saw duplicates: {', '.join(failures)}[/]")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
