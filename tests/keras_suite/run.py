"""Runs Keras' own tests of models, training, cloning, saving and callbacks with keras_repro's
classes substituted for `keras.Model` / `keras.Sequential`, and says which tests that pass with
plain Keras fail substituted.

The test files come from the source distribution of the installed Keras version (the wheel
does not ship all of them): `pip download keras==<version> --no-binary :all: --no-deps` into a
cache folder, once. They are extracted to a temporary folder and run there by pytest with
`plugin.py`; nothing of Keras is copied into this repository.

    python tests/keras_suite/run.py                          # TF, JAX, torch: plain and substituted
    python tests/keras_suite/run.py --backend tensorflow --substituted-only --jobs 2   # what CI runs
    python tests/keras_suite/run.py --backend jax --file trainers/trainer_test.py -k fit
    python tests/keras_suite/run.py --record                 # rewrites expected.json's plain failures

Plain and substituted runs are separate pytest processes, one per backend (KERAS_BACKEND is
read when Keras is imported). With --substituted-only the plain side is not run: the tests
recorded in expected.json as failing plain on that backend are deselected, and every other
test must pass substituted. Exit status: 0 when no test that passes plain fails substituted
(documented exceptions apart), 1 when one does (or a documented exception passes: the list is
then out of date), 2 on bad arguments; a missing sdist that cannot be fetched is a skip (0,
with a message saying so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXPECTED = os.path.join(HERE, "expected.json")
BACKENDS = ("tensorflow", "jax", "torch")
FILES = (
    "models/model_test.py", "models/sequential_test.py", "models/functional_test.py",
    "models/cloning_test.py", "trainers/trainer_test.py", "saving/saving_lib_test.py",
    "callbacks/model_checkpoint_test.py", "callbacks/early_stopping_test.py",
    "callbacks/backup_and_restore_test.py", "callbacks/reduce_lr_on_plateau_test.py",
    "callbacks/csv_logger_test.py",
)
"""The test files, under keras/src/ in the sdist."""
WEIGHTS = {
    "trainers/trainer_test.py": 30, "saving/saving_lib_test.py": 19, "models/model_test.py": 13,
    "models/functional_test.py": 10, "callbacks/model_checkpoint_test.py": 6, "models/sequential_test.py": 4,
    "models/cloning_test.py": 3, "callbacks/early_stopping_test.py": 3, "callbacks/backup_and_restore_test.py": 2,
    "callbacks/csv_logger_test.py": 2, "callbacks/reduce_lr_on_plateau_test.py": 2,
}
"""Rough relative run times (the files' sizes), to share the files out among --jobs processes."""
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras_repro", "keras-sdist")
TIMEOUT = 3600


def keras_version() -> str:
    """The installed Keras version, read without importing Keras (no backend starts)."""
    from importlib.metadata import version

    return version("keras")


def find_sdist(version: str, given: str | None) -> str | None:
    """The path of Keras' sdist: `given`, or the cache's copy, or one fetched into the cache;
    None (with the reason printed) when it cannot be had."""
    if given:
        if not os.path.isfile(given):
            raise SystemExit(f"run.py: --sdist names no file. Received: --sdist={given}")
        return given
    name = f"keras-{version}.tar.gz"
    cached = os.path.join(CACHE, name)
    if os.path.isfile(cached):
        return cached
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as folder:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"keras=={version}", "--no-binary", ":all:", "--no-deps",
             "--no-build-isolation", "--dest", folder, "--quiet"],
            capture_output=True, text=True,
        )
        fetched = os.path.join(folder, name)
        if result.returncode != 0 or not os.path.isfile(fetched):
            reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no file came back"]
            print(f"SKIPPED: Keras' test files need the sdist of keras=={version}, which could not be "
                  f"fetched ({reason[0]}). Fetch it with `pip download keras=={version} --no-binary :all: "
                  f"--no-deps` and pass --sdist PATH.")
            return None
        os.replace(fetched, cached)
    return cached


def extract(sdist: str, version: str, folder: str, files: list[str]) -> None:
    """Extracts the test files (at their place under keras/src/) and Keras' pytest settings."""
    prefix = f"keras-{version}/"
    wanted = {prefix + "pyproject.toml"} | {f"{prefix}keras/src/{name}" for name in files}
    with tarfile.open(sdist) as archive:
        members = [member for member in archive.getmembers() if member.name in wanted and member.isfile()]
        missing = wanted - {member.name for member in members}
        if missing:
            raise SystemExit(f"run.py: the sdist {sdist} lacks {sorted(missing)}")
        for member in members:
            member.name = member.name[len(prefix):]
            archive.extract(member, folder, filter="data")


def split(files: list[str], jobs: int) -> list[list[str]]:
    """The files in `jobs` groups of about equal size (longest first into the lightest group)."""
    groups: list[list[str]] = [[] for _ in range(min(jobs, len(files)))]
    weights = [0] * len(groups)
    for name in sorted(files, key=lambda n: -WEIGHTS.get(n, 1)):
        lightest = weights.index(min(weights))
        groups[lightest].append(name)
        weights[lightest] += WEIGHTS.get(name, 1)
    return groups


def run_side(folder: str, backend: str, side: str, files: list[str], deselect: list[str], keyword: str | None,
             log_folder: str, jobs: int = 1) -> dict:
    """Runs the files in `jobs` pytest processes side by side; returns the plugin's reports merged."""
    deselect_path = os.path.join(log_folder, f"{backend}-deselect.json")
    with open(deselect_path, "w") as file:
        json.dump(deselect, file)
    start = time.monotonic()
    running = []
    for number, group in enumerate(split(files, jobs)):
        name = f"{backend}-{side}-{number}"
        report, log = os.path.join(log_folder, f"{name}.json"), os.path.join(log_folder, f"{name}.log")
        env = dict(os.environ, KERAS_BACKEND=backend, KERAS_SUITE_SIDE=side, KERAS_SUITE_REPORT=report,
                   KERAS_SUITE_ROOT=folder, KERAS_SUITE_DESELECT=deselect_path, TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join([HERE, REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        command = [sys.executable, "-m", "pytest", "-p", "plugin", "-p", "no:cacheprovider", "-c",
                   os.path.join(folder, "pyproject.toml"), "--rootdir", folder, "-q", "-o", "addopts=",
                   "--durations=10"] + [os.path.join("keras", "src", file) for file in group]
        if keyword:
            command += ["-k", keyword]
        out = open(log, "w")
        running.append((subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT),
                        out, report, log))
    merged = {"side": side, "outcomes": {}, "messages": {}, "built": {}, "logs": []}
    for process, out, report, log in running:
        try:
            process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
            out.close()
        if not os.path.isfile(report):
            tail = open(log).read()[-3000:]
            raise SystemExit(f"run.py: the {side} run on {backend} wrote no report; the end of {log}:\n{tail}")
        with open(report) as file:
            result = json.load(file)
        merged["outcomes"].update(result["outcomes"])
        merged["messages"].update(result["messages"])
        for name, count in result["built"].items():
            merged["built"][name] = merged["built"].get(name, 0) + count
        merged["logs"].append(log)
    merged["seconds"] = time.monotonic() - start
    if side == "substituted" and merged["outcomes"] and not merged["built"]:
        raise SystemExit(f"run.py: the substituted run on {backend} built no keras_repro model: the substitution "
                         f"did not take effect (see {merged['logs']})")
    return merged


def load_expected() -> dict:
    with open(EXPECTED) as file:
        return json.load(file)


def exception_reason(expected: dict, node: str, backend: str) -> str | None:
    """The documented reason a test may fail substituted on `backend`, or None."""
    entry = expected.get("exceptions", {}).get(node)
    if entry and backend in entry["backends"]:
        return entry["reason"]
    return None


def file_of(node: str) -> str:
    return node.split("::")[0].removeprefix("keras/src/")


def compare(backend: str, files: list[str], plain: dict | None, substituted: dict, expected: dict) -> tuple[list, list, dict]:
    """Regressions (tests passing plain or not recorded as failing plain, that fail substituted),
    stale exceptions (documented exceptions that pass), and the per-file table rows."""
    recorded = set(expected.get("plain_failures", {}).get(backend, []))
    outcomes = substituted["outcomes"]
    if plain is not None:
        plain_ok = {node for node, outcome in plain["outcomes"].items() if outcome == "passed"}
        plain_failed = {node for node, outcome in plain["outcomes"].items() if outcome == "failed"}
    else:
        plain_ok = {node for node, outcome in outcomes.items() if node not in recorded and outcome != "skipped"}
        plain_failed = recorded
    regressions, stale, rows = [], [], {}
    for name in files:
        rows[name] = {"passed plain": 0, "failed plain": 0, "failed substituted": 0, "documented exceptions": 0}
    for node in sorted(plain_ok):
        row = rows.setdefault(file_of(node), {"passed plain": 0, "failed plain": 0, "failed substituted": 0,
                                               "documented exceptions": 0})
        row["passed plain"] += 1
        outcome = outcomes.get(node, "not run")
        reason = exception_reason(expected, node, backend)
        if outcome == "failed":
            if reason:
                row["documented exceptions"] += 1
            else:
                row["failed substituted"] += 1
                regressions.append((node, substituted["messages"].get(node, "")))
        elif reason and outcome == "passed":
            stale.append(node)
    for node in plain_failed:
        if file_of(node) in rows:
            rows[file_of(node)]["failed plain"] += 1
    return regressions, stale, rows


def print_table(backend: str, rows: dict, seconds: dict) -> None:
    timing = ", ".join(f"{side} {value:.0f} s" for side, value in seconds.items())
    print(f"\n{backend} ({timing})")
    print(f"{'file':42} {'passed plain':>12} {'failed plain':>12} {'failed subst.':>13} {'documented':>10}")
    totals = [0, 0, 0, 0]
    for name, row in rows.items():
        values = list(row.values())
        totals = [a + b for a, b in zip(totals, values)]
        print(f"{name:42} {values[0]:>12} {values[1]:>12} {values[2]:>13} {values[3]:>10}")
    print(f"{'all':42} {totals[0]:>12} {totals[1]:>12} {totals[2]:>13} {totals[3]:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default: all three")
    parser.add_argument("--file", action="append", help="a file under keras/src/, e.g. models/model_test.py; repeatable")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--substituted-only", action="store_true",
                        help="skip the plain run: deselect the tests expected.json records as failing plain")
    parser.add_argument("--record", action="store_true", help="write the plain failures found to expected.json")
    parser.add_argument("--sdist", help="path of keras-<version>.tar.gz (default: fetched into the cache)")
    parser.add_argument("--logs", help="folder for the pytest logs and reports (default: a temporary one)")
    parser.add_argument("--jobs", type=int, default=1, help="pytest processes per run, side by side (default 1)")
    args = parser.parse_args(argv)
    backends = args.backend or list(BACKENDS)
    files = args.file or list(FILES)
    unknown = [name for name in files if name not in FILES]
    if unknown:
        parser.error(f"--file must be one of {list(FILES)}. Received: --file={unknown}")
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive number. Received: --jobs={args.jobs}")
    if args.record and (args.substituted_only or args.keyword or args.file):
        parser.error("--record needs the whole plain run: drop --substituted-only, -k and --file")
    version = keras_version()
    expected = load_expected()
    if args.substituted_only and expected.get("keras") != version:
        print(f"expected.json records Keras {expected.get('keras')}, and Keras {version} is installed: "
              "running the plain side too.")
        args.substituted_only = False
    sdist = find_sdist(version, args.sdist)
    if sdist is None:
        return 0
    failed = False
    with tempfile.TemporaryDirectory(prefix="keras-suite-") as folder:
        log_folder = args.logs or os.path.join(folder, "logs")
        os.makedirs(log_folder, exist_ok=True)
        tests = os.path.join(folder, "keras-tests")
        extract(sdist, version, tests, files)
        for backend in backends:
            recorded = expected.get("plain_failures", {}).get(backend, []) if expected.get("keras") == version else []
            plain = None
            seconds = {}
            if not args.substituted_only:
                plain = run_side(tests, backend, "plain", files, [], args.keyword, log_folder, args.jobs)
                seconds["plain"] = plain["seconds"]
            substituted = run_side(tests, backend, "substituted", files, recorded if args.substituted_only else [],
                                   args.keyword, log_folder, args.jobs)
            seconds["substituted"] = substituted["seconds"]
            regressions, stale, rows = compare(backend, files, plain, substituted, expected)
            print_table(backend, rows, seconds)
            for name in files:
                nodes = [(node, message) for node, message in regressions if file_of(node) == name]
                if nodes:
                    print(f"  {name}: passes plain, fails substituted:")
                    for node, message in nodes:
                        print(f"    {node.split('::', 1)[1]}\n        {message}")
            for node in stale:
                print(f"  documented exception passes now (remove it from expected.json and the docs): {node}")
            failed = failed or bool(regressions) or bool(stale)
            if args.record:
                expected.setdefault("plain_failures", {})[backend] = sorted(
                    node for node, outcome in plain["outcomes"].items() if outcome == "failed")
        if args.record:
            expected["keras"] = version
            with open(EXPECTED, "w") as file:
                json.dump(expected, file, indent=1, sort_keys=True)
                file.write("\n")
            print(f"\nrecorded the plain failures of Keras {version} in {EXPECTED}")
        if args.logs is None and failed:
            print("(run with --logs FOLDER to keep the pytest logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
