"""The whole test suite: every test on TensorFlow, then the backend-dependent ones on JAX and
PyTorch, one pytest process per backend (Keras fixes its backend at import).

This is the README's test command and what CI runs. Each pytest prints its own output as it
goes, so a failure shows its own traceback; a table at the end says which run passed and how
long each took. Extra arguments go to every pytest (`python tests/matrix.py -x`).

The tiers, by pytest marker (setup.cfg):

* `unit`: no training and no child process (`python -m pytest -m unit`, about two minutes);
* unmarked: trains small models in the test process;
* `slow`: starts fresh Python processes (end-to-end; these set KERAS_BACKEND themselves, so
  they cover every backend from the TensorFlow run);
* `backends`: the modules whose code depends on the backend; they run again on JAX and torch.

Usage::

    python tests/matrix.py                        # the whole suite
    python tests/matrix.py --backends jax torch   # the JAX and torch runs only
    python tests/matrix.py --workers 1            # one pytest worker (no pytest-xdist)

Each pytest runs its test files on two workers (pytest-xdist, `--dist loadfile`, so a module's
fixtures are built once): most tests spend their time in one Python thread or waiting for a
child process, so two workers use both cores of a CI machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = {
    "tensorflow": [],  # every tier
    "jax": ["-m", "backends and not slow"],
    "torch": ["-m", "backends and not slow"],
}
"""The pytest selection of each backend's run."""

MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def main(argv: list[str] | None = None) -> int:
    """Runs pytest once per backend; returns 0 when every run passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=sorted(RUNS), default=list(RUNS),
                        help="the backends to run (default: all three)")
    parser.add_argument("--workers", type=int, default=2,
                        help="pytest-xdist workers per run (default: 2; 1 runs without xdist)")
    args, extra = parser.parse_known_args(argv)
    if args.workers > 1 and importlib.util.find_spec("xdist") is None:
        print("pytest-xdist is not installed (pip install -e '.[test]'): running with one worker", flush=True)
        args.workers = 1
    workers = ["-n", str(args.workers), "--dist", "loadfile"] if args.workers > 1 else []
    results = []
    for backend in args.backends:
        if importlib.util.find_spec(MODULES[backend]) is None:
            print(f"\n{backend}: not installed (pip install -e '.[test,jax,torch]' installs every backend)", flush=True)
            results.append((backend, "not installed", 0.0))
            continue
        command = [sys.executable, "-m", "pytest", *RUNS[backend], *workers, *extra]
        print(f"\n=== {backend}: KERAS_BACKEND={backend} {' '.join(command[1:])}", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
        start = time.monotonic()
        code = subprocess.call(command, cwd=REPO, env=env)
        results.append((backend, "passed" if code == 0 else f"FAILED (pytest exit {code})", time.monotonic() - start))
    print("\nbackend     selection                   result               minutes")
    for backend, result, seconds in results:
        selection = " ".join(RUNS[backend][1:]) or "all tests"
        print(f"{backend:<11} {selection:<27} {result:<20} {seconds / 60:7.1f}")
    return 0 if all(result == "passed" for _, result, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
