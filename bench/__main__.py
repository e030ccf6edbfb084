"""`python -m bench`: copd vs TRL vs a stock-transformers baseline (step rate, OPD overhead, rollouts, memory).

    python -m bench                     # tiny and small models, 2 warm-up rounds, 5 repeats
    python -m bench --smoke             # one repeat, smallest sizes, tiny model only (CI)
    python -m bench --models small --repeats 9 --threads 2 --only grpo_step,rollout
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the comparisons, print the markdown table."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one repeat, no warm-up, smallest sizes, tiny model only")
    p.add_argument("--models", default="tiny,small", help="comma-separated recipes: tiny, small")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is copd's setting for builtin:tiny)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure each side's peak memory in its own process (default: on, off with --smoke)")
    p.add_argument("--only", default="", help="comma-separated comparisons: grpo_step, phase2_1t, phase2_2t, rollout")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time steps by wall clock, or by this process's CPU time (steadier on a loaded machine)")
    args = p.parse_args(argv)
    from bench.quiet import quiet_offline

    quiet_offline(args.threads)
    from bench import run
    from bench.common import Sizes

    sizes, models = (run.SMOKE, ["tiny"]) if args.smoke else (Sizes(), args.models.split(","))
    repeats, warmup = (1, 0) if args.smoke else (args.repeats, args.warmup)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if run.trl_side.available() is None:
        print("note: trl is not installed; the TRL sides are skipped (pip install -e '.[bench]')", flush=True)
    print(run.environment())
    print(f"sizes: {sizes}; warm-up {warmup}, repeats {repeats}, medians, {args.clock} clock", flush=True)
    only = set(filter(None, args.only.split(",")))
    rows = [r for m in models for r in run.compare(m, sizes, warmup, repeats, log, only, args.clock)]
    if args.memory if args.memory is not None else not args.smoke:
        rows = run.with_memory(rows, args.smoke, args.threads, log)
    print(run.HEADER)
    for r in rows:
        print(r.markdown())
    print()
    for line in run.targets(rows):
        print("- " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
