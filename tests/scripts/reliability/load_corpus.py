"""Loads every damaged fingerprint file of a corpus and says what happened, one line each.

Run as: python tests/scripts/reliability/load_corpus.py ORIGINAL FOLDER [NAME ...]

For each FOLDER/NAME.h5 (every .h5 in FOLDER, sorted, when no NAME is given) prints
"BEGIN NAME" before the load and then one JSON line:

    {"name": ..., "outcome": "error" | "same" | "changed" | "other" | "timeout",
     "message": ..., "reason": ..., "changed": [fields that differ from ORIGINAL]}

"error" is a ReferenceFileError, "other" any other exception, "timeout" a load that
took more than 20 s (signal.alarm). A crash (e.g. a segfault in HDF5) shows as a
BEGIN line without its JSON line.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from keras_repro import ReferenceFileError, load_fingerprints  # noqa: E402

TIMEOUT = 20


class Hang(BaseException):
    """Raised by the alarm; a BaseException so `except Exception` in the library cannot eat it."""


def _alarm(signum, frame):
    raise Hang()


def _stats(fingerprint):
    return [None if r.stats is None else [repr(v) for v in r.stats] for r in fingerprint.records]


def _metrics(fingerprint):
    return {k: repr(v) for k, v in fingerprint.metrics.items()}


def differences(original, log):
    """The fields in which `log` differs from `original` (digest-covered or not)."""
    changed = []
    fingerprints = [("initial", original.initial, log.initial)]
    if len(original.epochs) != len(log.epochs):
        changed.append("epoch count")
    fingerprints += [(f"epoch {a.epoch}", a, b) for a, b in zip(original.epochs, log.epochs)]
    if len(original.batches) != len(log.batches):
        changed.append("batch count")
    fingerprints += [(f"batch {a.epoch}/{a.batch}", a, b) for a, b in zip(original.batches, log.batches)]
    for where, a, b in fingerprints:
        if (a is None) != (b is None):
            changed.append(f"{where}: presence")
            continue
        if a is None:
            continue
        if a.digest != b.digest:
            changed.append(f"{where}: digest")
        if (a.epoch, a.batch) != (b.epoch, b.batch):
            changed.append(f"{where}: epoch label")
        if len(a.records) != len(b.records):
            changed.append(f"{where}: row count")
        for field in ("digest", "part", "dtype", "shape", "path"):
            if [getattr(r, field) for r in a.records] != [getattr(r, field) for r in b.records]:
                changed.append(f"{where}: variable {field}")
        if _stats(a) != _stats(b):
            changed.append(f"{where}: stats")
        if _metrics(a) != _metrics(b):
            changed.append(f"{where}: metrics")
    for field in ("seed", "created", "environment", "notes"):
        if getattr(original, field) != getattr(log, field):
            changed.append(field)
    return changed


def main():
    original_path, folder, *names = sys.argv[1:]
    original = load_fingerprints(original_path)
    names = names or sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".h5"))
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        path = os.path.join(folder, name + ".h5")
        print("BEGIN", name, flush=True)
        record = {"name": name, "message": "", "reason": "", "changed": []}
        signal.alarm(TIMEOUT)
        try:
            log = load_fingerprints(path)
        except ReferenceFileError as error:
            record.update(outcome="error", message=str(error), reason=error.reason,
                          names_file=path in str(error) and error.path == path)
        except Hang:
            record.update(outcome="timeout")
        except BaseException as error:  # noqa: BLE001 - anything else is what the test looks for
            record.update(outcome="other", message=f"{type(error).__name__}: {error}")
        else:
            record["changed"] = differences(original, log)
            record["outcome"] = "changed" if record["changed"] else "same"
        finally:
            signal.alarm(0)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
