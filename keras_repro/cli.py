"""The `keras-repro` command: `demo`, `show`, `diff`, `run`, `audit`, `preflight` and `bisect`.

Exit codes: 0 reproducible / identical / ok, 1 differ, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence

from keras_repro.errors import MissingMainGuardError, ReferenceFileError

EXIT_OK, EXIT_DIFFER, EXIT_BAD_INPUT = 0, 1, 2


def _short(digest: str | None) -> str:
    """The first 16 hex digits of a digest."""
    return (digest or "-")[:16]


def _format_metrics(metrics: dict, names: Sequence[str]) -> list[str]:
    """Metric values as fixed-width text, '-' where missing."""
    return [f"{metrics[name]:.6f}" if name in metrics else "-" for name in names]


def _table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table with aligned columns."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _metric_names(log) -> list[str]:
    """The metrics shown in tables: loss first, at most four."""
    names: list[str] = []
    for fingerprint in log.epochs:
        names += [k for k in fingerprint.metrics if k not in names]
    names.sort(key=lambda n: (n.startswith("val_"), n != "loss" and n != "val_loss", n))
    return names[:4]


def epoch_table(log, other=None) -> str:
    """The per-epoch table of a log; with `other`, a column saying whether it matches."""
    names = _metric_names(log)
    header = ["epoch", "digest"] + names + (["run 2"] if other is not None else [])
    rows = []
    if log.initial is not None:
        row = [f"start {log.initial.epoch}", _short(log.initial.digest)] + ["-"] * len(names)
        if other is not None:
            row.append(_match(log.initial, other.initial))
        rows.append(row)
    for fingerprint in log.epochs:
        row = [str(fingerprint.epoch), _short(fingerprint.digest)] + _format_metrics(fingerprint.metrics, names)
        if other is not None:
            row.append(_match(fingerprint, other.epoch(fingerprint.epoch)))
        rows.append(row)
    return _table(rows, header)


def _match(expected, actual) -> str:
    """"identical", "DIFFERS" or "not run" for one table cell."""
    from keras_repro.fingerprinting.compare import compare_fingerprints

    if actual is None:
        return "not run"
    return "identical" if compare_fingerprints(expected, actual, None) is None else "DIFFERS"


def _load(path: str):
    """Loads a fingerprint file; the caller turns ReferenceFileError into exit 2."""
    from keras_repro.store.reader import load_fingerprints

    return load_fingerprints(path)


def cmd_show(args: argparse.Namespace) -> int:
    """`keras-repro show FILE`: values an older version stored that this one would not
    (any `TF_*`..., secrets among them) are redacted, and the output says so."""
    from keras_repro.fingerprinting.environment import redacted, redacted_notes

    log = _load(args.file)
    environment, hidden = redacted(log.environment)
    notes, hidden_notes = redacted_notes(log.notes)
    print(f"file:     {args.file}")
    print(f"created:  {log.created}")
    print(f"seed:     {log.seed if log.seed is not None else '-'}")
    print(f"epochs:   {len(log.epochs)}{_planned(log)}")
    print(f"kernels:  deterministic kernels {log.environment.get('deterministic_kernels', 'not recorded')}")
    print()
    print("environment:")
    for key, value in environment.items():
        print(f"  {key}: {value}")
    if hidden or hidden_notes:
        counted = [f"{n} {what}{'s' if n != 1 else ''}"
                   for n, what in ((len(hidden), "value"), (len(hidden_notes), "note")) if n]
        print(f"  ({' and '.join(counted)} redacted: an older keras_repro stored every "
              "TF_/XLA_/CUDA_/CUBLAS_/KERAS_/OMP_/MKL_/JAX_/TORCH_ variable, secrets among them; keras_repro "
              "now records only the variables in keras_repro.fingerprinting.environment.RECORDED_VARIABLES, never one whose "
              "name looks secret. Record the run again to drop them from the file.)")
    for key, value in notes.items():
        print(f"note {key}: {value}")
    print()
    _print_configuration(log.config)
    print()
    print(epoch_table(log))
    return EXIT_OK


def _print_configuration(config) -> None:
    """The recorded configuration: its settings, then one line per layer of the model."""
    import json

    from keras_repro.fingerprinting.configuration import ORDER, layers

    if config is None:
        print("configuration: not recorded (the file was written by an earlier keras_repro)")
        return
    print("configuration:")
    for key in sorted((k for k in config if not k.startswith("model.layer.")),
                      key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k)):
        value = config[key]
        if key == "optimizer":
            entry = json.loads(value)
            value = f"{entry['class']}(" + ", ".join(f"{k}={v}" for k, v in entry["config"].items() if v != "None") + ")"
        print(f"  {key}: {value}")
    for index, layer in enumerate(layers(config)):
        items = ", ".join(f"{k}={v}" for k, v in layer.get("config", {}).items() if v != "None" and k != "trainable")
        print(f"  layer {index}: {layer.get('class')} '{layer.get('name')}' {items}"[:160].rstrip())


def _planned(log) -> str:
    """ " of 5 planned (incomplete: ...)" for `show`, or "" for a complete recording."""
    if log.complete:
        return ""
    last = log.epochs[-1].epoch if log.epochs else None
    stopped = f"after epoch {last}" if last is not None else "before its first epoch ended"
    return (f" of {log.planned_epochs - (log.first_epoch or 0)} planned (incomplete: the recording stopped "
            f"{stopped}; a fit with SeedCallback(mode='auto') verifies it and records the rest)")


def cmd_diff(args: argparse.Namespace) -> int:
    """`keras-repro diff A B`."""
    from keras_repro.fingerprinting.diagnosis import likely_cause
    from keras_repro.fingerprinting.environment import differences
    from keras_repro.trace.store import is_trace_file

    traces = [is_trace_file(path) for path in (args.a, args.b)]
    if any(traces):
        return _diff_traces(args.a, args.b, traces)
    reference, other = _load(args.a), _load(args.b)
    comparison = reference.compare(other)
    if comparison.identical:
        print(f"identical: {len(comparison.epochs_compared)} epochs compared")
        print(f"verdict: {comparison.verdict} ({comparison.explanation})")
        return EXIT_OK
    print(f"differ: {comparison.first_divergence}")
    cause = likely_cause(comparison.first_divergence, reference, other)
    print(f"likely cause: {cause}")
    print(f"verdict: {comparison.verdict} ({comparison.explanation})")
    if reference.config is not None and other.config is not None:
        from keras_repro.fingerprinting import configuration

        changes = configuration.differences(reference.config, other.config,
                                            learning_rate=reference.first_epoch == other.first_epoch)
        if changes:
            print("configuration differences:")
            for _, text in changes:
                print(f"  {text}")
    changed = differences(dict(reference.environment), dict(other.environment))
    if changed:
        print("environment differences (likely explanation):")
        for key, (a, b) in changed.items():
            print(f"  {key}: {a if a is not None else '(unset)'} -> {b if b is not None else '(unset)'}")
    return EXIT_DIFFER


def _diff_traces(a: str, b: str, traces: list[bool]) -> int:
    """`keras-repro diff` of two layer traces (`keras_repro.trace`)."""
    from keras_repro.fingerprinting.environment import differences
    from keras_repro.trace.compare import compare_traces
    from keras_repro.trace.store import read_trace

    trace, other = (a, b) if traces[0] else (b, a)
    if not all(traces) and os.path.exists(other):
        raise ReferenceFileError(other, f"is not a layer trace, and '{trace}' is: diff compares two fingerprint files "
                                 f"or two trace files. Received: a={a!r}, b={b!r}", what="File")
    first, second = read_trace(a), read_trace(b)
    comparison = compare_traces(first, second)
    print(comparison)
    divergence = comparison.first_divergence
    if divergence is None:
        return EXIT_OK
    print(f"kind: {divergence.category}")
    if divergence.digests[0] and divergence.digests[1]:
        print(f"checksums: {divergence.digests[0]} vs {divergence.digests[1]}")
        mean = [s.get("mean", float("nan")) for s in divergence.stats]
        print(f"mean: {mean[0]:.9g} vs {mean[1]:.9g}")
    changed = differences(first.environment, second.environment)
    if changed:
        print("environment differences (likely explanation):")
        for key, (x, y) in changed.items():
            print(f"  {key}: {x if x is not None else '(unset)'} -> {y if y is not None else '(unset)'}")
    return EXIT_DIFFER


def cmd_demo(args: argparse.Namespace) -> int:
    """`keras-repro demo`."""
    from keras_repro.seeding import MAX_SEED
    from keras_repro.tools import demo

    if not 0 <= args.seed <= MAX_SEED:
        print(f"keras-repro: error: --seed must be in [0, {MAX_SEED}]. Received: --seed {args.seed}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.epochs < 1:
        print(f"keras-repro: error: --epochs must be at least 1. Received: --epochs {args.epochs}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out or tempfile.mkdtemp(prefix="keras-repro-demo-")
    os.makedirs(out, exist_ok=True)
    result = demo.run_demo(out, seed=args.seed, epochs=args.epochs)
    print(f"Trained a {result.parameters}-parameter model on {result.dataset} twice "
          f"(seed {args.seed}, {args.epochs} epochs, backend {result.backend}).")
    print(f"Run 1 recorded {result.reference}; run 2 verified against it.")
    print()
    print(epoch_table(result.first, result.second))
    print()
    if result.divergence is None:
        print(f"REPRODUCIBLE: all {len(result.first.epochs)} epochs bit-identical "
              f"(weights, optimizer state, layer RNG state, data order and the batches fed).")
        print(f"Inspect: keras-repro show {result.reference}")
        return EXIT_OK
    print(f"NOT REPRODUCIBLE: {result.divergence}")
    return EXIT_DIFFER


def cmd_run(args: argparse.Namespace) -> int:
    """`keras-repro run -- COMMAND...`."""
    from keras_repro.tools import launcher

    command = list(args.command_line)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("keras-repro: error: run needs a command, e.g. keras-repro run -- python train.py", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        env = launcher.launch_environment(os.environ, args.hash_seed, not args.no_determinism, args.threads)
    except ValueError as error:
        print(f"keras-repro: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings = " ".join(f"{k}={v}" for k, v in sorted(launcher.changed(env).items()))
    print(f"keras-repro run: {settings}", file=sys.stderr)
    code = launcher.run(command, env)
    if code == 127:
        print(f"keras-repro: error: cannot start '{command[0]}': not found", file=sys.stderr)
    return code


def cmd_audit(args: argparse.Namespace) -> int:
    """`keras-repro audit SCRIPT.py`."""
    from keras_repro.tools.audit import audit, validate_options
    from keras_repro.tools.scripts import load_script, script_data, script_fit_kwargs

    try:
        validate_options(args.batch_size, args.seed, steps=args.steps)
        script = load_script(args.script, ("build_model", "data"))
        x, y = script_data(script)
        fit_kwargs = script_fit_kwargs(script)
    except ValueError as error:
        print(f"keras-repro: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = audit(
        script.build_model, x, y, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        fresh_process=not args.in_process_only, **fit_kwargs,
    )
    print(report)
    return EXIT_OK if report.identical else EXIT_DIFFER


def cmd_preflight(args: argparse.Namespace) -> int:
    """`keras-repro preflight [SCRIPT.py]`: the stack checks, then (with a script) its steps."""
    from keras_repro.determinism import prepare_at_import
    from keras_repro.tools.audit import validate_options
    from keras_repro.tools.scripts import load_script, script_data

    prepare_at_import()  # before the script can start the backend
    build = x = y = None
    if args.script is not None:
        try:
            validate_options(args.batch_size, 0, steps=args.steps)
            script = load_script(args.script, ("build_model", "data"))
            x, y = script_data(script)
            build = script.build_model
        except ValueError as error:
            print(f"keras-repro: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    from keras_repro.tools.preflight import preflight

    report = preflight(build, x, y, steps=args.steps, batch_size=args.batch_size)
    print(report)
    return EXIT_OK if report.ok else EXIT_DIFFER


def cmd_bisect(args: argparse.Namespace) -> int:
    """`keras-repro bisect CHECKPOINT.keras SCRIPT.py --epoch K`."""
    from keras_repro.tools.audit import bisect, validate_checkpoint, validate_options
    from keras_repro.tools.scripts import load_script, script_data, script_fit_kwargs

    try:
        validate_checkpoint(args.checkpoint)
        validate_options(args.batch_size, args.seed)
        if args.epoch < 0:
            raise ValueError(f"--epoch must be at least 0. Received: --epoch {args.epoch}")
        script = load_script(args.script, ("data",))
        x, y = script_data(script)
        fit_kwargs = script_fit_kwargs(script)
    except (OSError, ValueError) as error:
        print(f"keras-repro: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = bisect(
        args.checkpoint, x, y, epoch=args.epoch, seed=args.seed, batch_size=args.batch_size, **fit_kwargs
    )
    print(report)
    return EXIT_OK if report.identical else EXIT_DIFFER


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, without the source line a CLI user cannot act on."""
    return f"keras-repro: {category.__name__}: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-repro`."""
    parser = argparse.ArgumentParser(
        prog="keras-repro",
        description="Reproducible Keras training: record, show and compare per-epoch fingerprints.",
        epilog="Exit codes: 0 reproducible/identical, 1 differ, 2 bad input.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a small model twice on bundled data and verify")
    demo.add_argument("--seed", type=int, default=7, help="seed of both runs (default 7)")
    demo.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5)")
    demo.add_argument("--out", help="folder for the fingerprint files (default: a new temporary folder)")
    demo.set_defaults(handler=cmd_demo)
    show = sub.add_parser("show", help="per-epoch table and environment of a fingerprint file")
    show.add_argument("file", help="a fingerprint file (.h5)")
    show.set_defaults(handler=cmd_show)
    diff = sub.add_parser("diff", help="first divergence between two fingerprint files, or two layer traces")
    diff.add_argument("a", help="the reference run (.h5): a fingerprint file or a layer trace (kr.trace_layers)")
    diff.add_argument("b", help="the run to check (.h5), of the same kind")
    diff.set_defaults(handler=cmd_diff)
    run = sub.add_parser(
        "run",
        help="start a program with PYTHONHASHSEED and determinism variables set before it starts",
        description="Starts COMMAND with PYTHONHASHSEED (and the backends' determinism variables) set "
        "in its environment: they only take effect when set before the interpreter starts. "
        "Exits with COMMAND's exit code.",
    )
    run.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED for the program (default 0)")
    run.add_argument("--threads", type=int, help="limit CPU threads (TF, OpenMP, MKL, OpenBLAS)")
    run.add_argument("--no-determinism", action="store_true", help="only set PYTHONHASHSEED")
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    run.set_defaults(handler=cmd_run)
    audit = sub.add_parser(
        "audit",
        help="train the first steps of SCRIPT twice, and in a fresh process; name the first divergent batch",
        description="SCRIPT defines build_model() (returning a compiled model) and data() (returning "
        "(x, y)), and optionally FIT_KWARGS (more fit arguments). Trains the first N steps twice in "
        "this process and once in a fresh process with another PYTHONHASHSEED, fingerprinting every "
        "batch, and names the first batch and variable that differ, with known hazards.",
    )
    audit.add_argument("script", help="a Python file defining build_model() and data()")
    audit.add_argument("--steps", type=int, default=20, help="training steps to compare (default 20)")
    audit.add_argument("--batch-size", type=int, default=32, help="rows per step for array data (default 32)")
    audit.add_argument("--seed", type=int, default=None, help="SeedCallback seed of every run (default: a DeterministicModel's own, else 7)")
    audit.add_argument("--in-process-only", action="store_true", help="skip the fresh-process comparison")
    audit.set_defaults(handler=cmd_audit)
    preflight = sub.add_parser(
        "preflight",
        help="check the environment and the known determinism bugs of the installed versions; with SCRIPT, "
        "train its first steps with deterministic kernels, name the ops without one, time both",
        description="Checks the environment a deterministic run needs (PYTHONHASHSEED, deterministic kernels, "
        "XLA_FLAGS, CUBLAS_WORKSPACE_CONFIG, threads) and the installed versions against a table of known "
        "determinism bugs and behaviour changes (keras_repro/tools/known_issues.py), each ok / warn / fail "
        "with the fix. SCRIPT defines build_model() (returning a compiled model) and data() (returning "
        "(x, y)): then it also trains a few steps with the backend's deterministic kernels on, names every "
        "op that has no deterministic implementation on this device with the layer it comes from, and "
        "times the steps with the kernels on and off. Exit 0 when ready, 1 when a check failed or some op "
        "has no deterministic kernel.",
    )
    preflight.add_argument("script", nargs="?", help="a Python file defining build_model() and data() "
                           "(without one, only the environment and the known issues are checked)")
    preflight.add_argument("--steps", type=int, default=5, help="training steps per setting (default 5)")
    preflight.add_argument("--batch-size", type=int, default=32, help="rows per step for array data (default 32)")
    preflight.set_defaults(handler=cmd_preflight)
    bisect = sub.add_parser(
        "bisect",
        help="replay epoch K twice from the checkpoint saved before it; name the first divergent batch",
        description="Loads CHECKPOINT (the .keras file saved at the end of epoch K-1) twice, replays "
        "epoch K on SCRIPT's data() (and FIT_KWARGS) with per-batch fingerprints, and names the first "
        "batch and variable where the replays differ. Identical replays point to the environment: "
        "compare the runs with `keras-repro diff`.",
    )
    bisect.add_argument("checkpoint", help="the .keras checkpoint saved at the end of epoch K-1")
    bisect.add_argument("script", help="a Python file defining data() (and registering custom layers)")
    bisect.add_argument("--epoch", type=int, required=True, help="the epoch K to replay (0-based, as in callbacks)")
    bisect.add_argument("--batch-size", type=int, default=32, help="rows per batch for array data (default 32)")
    bisect.add_argument("--seed", type=int, default=None, help="SeedCallback seed of the original run (default: a DeterministicModel's own, else 7)")
    bisect.set_defaults(handler=cmd_bisect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-repro`; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    previous_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return args.handler(args)
    except (ReferenceFileError, MissingMainGuardError) as error:
        print(f"keras-repro: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        warnings.formatwarning = previous_format
