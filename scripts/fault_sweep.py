#!/usr/bin/env python
"""The long fault-injection sweep (issue 31; the suite runs a sample: tests/test_faults.py).

    PYTHONPATH=tests python scripts/fault_sweep.py [--points 40] [--in-checkpoint 10] [--recipes r3-two-stage r5-sft-grpo] [--seed 0]

For each recipe (at test size): one uninterrupted run, then for each seeded kill point a fresh run
SIGKILLed there, resumed once to completion and compared bit for bit with the uninterrupted one
(each kill point on its own; the suite chains several kills per run to fit its time).
Prints one line per kill point and the totals; exit 1 if any resume was not exact.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:  # the harness lives with the tests: PYTHONPATH=tests
    from faults.recipes import TEST_SIZE
    from faults.sweep import Runner, Zygote, independent
except ImportError:
    sys.exit("error: the fault harness is in tests/faults: run as PYTHONPATH=tests python scripts/fault_sweep.py ...")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=40, help="kill points per recipe")
    p.add_argument("--in-checkpoint", type=int, default=10, help="of which inside a checkpoint write")
    p.add_argument("--recipes", nargs="+", default=list(TEST_SIZE))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="fault-sweep-") as tmp:
        zygote = Zygote(Path(tmp))
        for recipe in args.recipes:
            work = Path(tmp) / recipe
            work.mkdir()
            start = time.time()
            outcome = independent(Runner(zygote, TEST_SIZE[recipe], work), args.points, args.in_checkpoint, args.seed)
            print(f"{outcome.line(recipe)} ({time.time() - start:.0f} s)")
            for failure in outcome.failures:
                print(f"  FAILED {failure}")
            failed |= bool(outcome.failures)
        zygote.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
