"""Distributed training: tf.distribute MirroredStrategy and MultiWorkerMirroredStrategy,
Keras' JAX DataParallel and ModelParallel (in one process, and in two JAX processes on
loopback), and the consistency of per-device and per-process copies of variables.

Each test runs scripts in tests/scripts/distributed/ in fresh interpreters (devices must
be configured before the framework starts), each bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time

import keras
import pytest

from keras_repro import load_fingerprints
from tests.conftest import REPO, run_child, start_child

SCRIPTS = os.path.join(REPO, "tests", "scripts", "distributed")
TIMEOUT = 150
"""Seconds one script may take (they take 5-20 s on 2 CPU cores)."""


def _env(**extra: str) -> dict:
    """The variables of a script: fixed hash seed, TensorFlow backend, no TF_CONFIG."""
    return {"PYTHONHASHSEED": "0", "KERAS_BACKEND": "tensorflow", "TF_CONFIG": None, **extra}


def _parse(stdout: str) -> dict:
    """{KEY: rest of line} for every upper-case `KEY value` line a script printed."""
    found = {}
    for line in stdout.splitlines():
        key, _, rest = line.partition(" ")
        if key.isupper():
            found[key] = rest
    return found


def _run(script: str, *args: object, env: dict | None = None) -> dict:
    """Runs one script to completion; its parsed output, or a failure with its stderr."""
    command = [sys.executable, os.path.join(SCRIPTS, script), *map(str, args)]
    return _parse(run_child(command, env=env or _env(), timeout=TIMEOUT).stdout)


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_together(commands: list[list[str]], envs: list[dict]) -> list[dict]:
    """Runs the processes of one distributed run at the same time; kills them all as soon as
    one fails (the others would wait for it in a collective) or the timeout passes."""
    with contextlib.ExitStack() as stack:
        logs = [(stack.enter_context(tempfile.TemporaryFile("w+")), stack.enter_context(tempfile.TemporaryFile("w+")))
                for _ in commands]
        processes = [
            start_child(command, env=env, stdout=out, stderr=err)
            for command, env, (out, err) in zip(commands, envs, logs)
        ]
        deadline = time.monotonic() + TIMEOUT
        try:
            while True:
                codes = [process.poll() for process in processes]  # every one, each time
                if None not in codes or any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            timed_out = time.monotonic() > deadline
            late = [process.poll() is None for process in processes]
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        outputs = []
        for out, err in logs:
            out.seek(0), err.seek(0)
            outputs.append((out.read(), err.read()))
    failed = [
        f"process {index} {_ended(process.returncode, killed, timed_out)}:\n{out}\n{err[-3000:]}"
        for index, (process, killed, (out, err)) in enumerate(zip(processes, late, outputs))
        if process.returncode != 0
    ]
    assert not failed, "\n".join(failed)  # every failing process: the first error may be in either
    return [_parse(out) for out, _ in outputs]


def _ended(returncode: int, killed: bool, timed_out: bool) -> str:
    """How a process of `_run_together` ended, for its failure message."""
    if not killed:
        return f"failed ({returncode})"
    return f"did not finish within {TIMEOUT} s" if timed_out else "was stopped: another process failed"


def _run_workers(references: list, mode: str = "auto", fix: bool = True) -> list[dict]:
    """Runs the two workers of one MultiWorkerMirroredStrategy cluster at the same time
    (each calling `kr.fix_multi_worker_fit()` first, unless `fix` is False)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    commands, envs = [], []
    for index, reference in enumerate(references):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        commands.append([sys.executable, os.path.join(SCRIPTS, "multi_worker.py"), str(reference), mode, "fix" if fix else "nofix"])
        envs.append(_env(TF_CONFIG=config))
    return _run_together(commands, envs)


def _run_jax_processes(folder, case: str) -> list[dict]:
    """Runs one case of jax_multi_process.py in two JAX processes on loopback (process 1's
    reference path is in folder/p1, created empty)."""
    (folder / "p1").mkdir(exist_ok=True)
    port = _free_ports(1)[0]
    script = os.path.join(SCRIPTS, "jax_multi_process.py")
    commands = [[sys.executable, script, str(process), str(port), str(folder), case] for process in (0, 1)]
    return _run_together(commands, [_env(KERAS_BACKEND="jax")] * 2)


@pytest.fixture(scope="module")
def mirrored_reference(tmp_path_factory):
    """The folder holding mirrored.h5, recorded by a MirroredStrategy fit, and that run's output."""
    folder = tmp_path_factory.mktemp("mirrored")
    return folder, _run("mirrored.py", "checks", folder, 7)


@pytest.mark.slow
def test_mirrored_fit_records_then_verifies_in_a_new_process(mirrored_reference):
    """MirroredStrategy on 2 CPUs: a fit records, and a fit in a new interpreter verifies it bit for bit."""
    folder, record = mirrored_reference
    assert record["REPLICAS"] == "2" and record["VARIABLE_TYPE"] == "MirroredVariable"
    assert (record["MODE"], record["DIVERGENCE"]) == ("record", "None")
    assert record["INITIAL_COPIES_EQUAL"] == record["FINAL_COPIES_EQUAL"] == "True"
    recorded = load_fingerprints(folder / "mirrored.h5")
    assert len(recorded.epochs) == 3
    orders = [next(r.digest for r in fp.part("data") if r.path == "order") for fp in recorded.epochs]
    assert len(set(orders)) == 3  # the owned order changes every epoch under the strategy
    assert recorded.batches and {len(r.digest) for fp in recorded.batches for r in fp.records} == {16}
    verify = _run("mirrored.py", "fit", folder, 7)
    assert (verify["MODE"], verify["DIVERGENCE"]) == ("verify", "None")  # batch checksums too
    assert verify["EPOCHS"] == record["EPOCHS"] and verify["INITIAL"] == record["INITIAL"]
    assert verify["MIRRORED_INITIAL"] == record["MIRRORED_INITIAL"]


@pytest.mark.slow
def test_mirrored_fit_with_another_seed_is_detected(mirrored_reference):
    """MirroredStrategy: a fit with seed 8 against the seed-7 reference fails before its first step."""
    folder, record = mirrored_reference
    other = _run("mirrored.py", "fit", folder, 8)
    assert other["MISMATCH"].startswith("Run is not reproducible")
    assert other["DIVERGENCE"].startswith("initial state (before the first step of epoch 0)")
    assert other["MIRRORED_INITIAL"] != record["MIRRORED_INITIAL"]


@pytest.mark.slow
def test_mirrored_seed_sets_every_copy_of_the_initial_weights(mirrored_reference):
    """The seed fixes every device's copy: as without a strategy, and reinitialize_weights overwrites scrambled copies."""
    _, record = mirrored_reference
    assert record["MIRRORED_INITIAL"] == record["PLAIN_INITIAL"]
    assert record["SCRAMBLED_COPIES_EQUAL"] == "False"
    assert record["REINITIALIZED_COPIES_EQUAL"] == "True"
    assert record["REINITIALIZED"] == record["MIRRORED_INITIAL"]


@pytest.mark.slow
def test_mirrored_epoch_order_is_the_order_fed(mirrored_reference):
    """MirroredStrategy: the fit ends where fits fed each epoch's rows explicitly, or one epoch per fit, end."""
    _, record = mirrored_reference
    assert record["ORDER_STRAIGHT"] == record["ORDER_EXPLICIT"] == record["ORDER_PER_EPOCH"]
    assert record["ORDER_STALE"] != record["ORDER_STRAIGHT"]  # the comparison can fail


@pytest.mark.slow
def test_mirrored_subclassed_model_builds_mirrored_variables(tmp_path):
    """A subclassed DeterministicModel created under MirroredStrategy and fit outside its scope gets mirrored variables."""
    result = _run("mirrored.py", "subclass", tmp_path, 7)
    assert result["VARIABLE_TYPE"] == "MirroredVariable" and result["FINAL_COPIES_EQUAL"] == "True"
    assert (result["MODE"], result["DIVERGENCE"]) == ("record", "None")


@pytest.mark.slow
def test_multi_worker_fingerprints_agree_and_only_the_chief_writes(tmp_path):
    """MultiWorkerMirroredStrategy, 2 workers on loopback: equal fingerprints in both workers and all runs; the chief
    alone writes; workers verify with mode="verify"."""
    shared = tmp_path / "shared.h5"
    first = _run_workers([shared, shared])
    assert [w["FIXED"] for w in first] == ["True True", "True True"]  # kr.fix_multi_worker_fit(), twice
    assert [w["TASK"] for w in first] == ["worker 0", "worker 1"] and first[0]["REPLICAS"] == "2"
    assert first[0]["EPOCHS"] == first[1]["EPOCHS"] and first[0]["INITIAL"] == first[1]["INITIAL"]
    assert [w["MODE"] for w in first] == ["record", "record"]
    recorded = load_fingerprints(shared)
    assert " ".join(fp.digest for fp in recorded.epochs) == first[0]["EPOCHS"]

    (tmp_path / "worker1").mkdir()
    private = tmp_path / "worker1" / "shared.h5"
    second = _run_workers([shared, private])
    assert (second[0]["MODE"], second[0]["DIVERGENCE"]) == ("verify", "None")
    assert second[1]["MODE"] == "record" and not os.listdir(tmp_path / "worker1")
    assert second[0]["EPOCHS"] == second[1]["EPOCHS"] == first[0]["EPOCHS"]

    # In "auto" mode only the chief verifies (a worker could otherwise see the file the
    # chief is still writing); with mode="verify" every worker checks the reference.
    third = _run_workers([shared, shared], mode="verify")
    assert [(w["MODE"], w["DIVERGENCE"]) for w in third] == [("verify", "None"), ("verify", "None")]
    assert third[1]["EPOCHS"] == first[0]["EPOCHS"]


KERAS_MULTI_WORKER_ERRORS = (
    "with an unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>)",  # _maybe_symbolic_build
    "Invalid reduction dimension 0 for input with 0 dimensions",  # reduce_per_replica, scalar loss
)
"""The errors of Keras' own `fit` under MultiWorkerMirroredStrategy that
`kr.fix_multi_worker_fit` works around (keras-team/keras#20585)."""


@pytest.mark.slow
def test_keras_still_needs_the_multi_worker_fix(tmp_path):
    """Without `kr.fix_multi_worker_fit()`, Keras' fit under MultiWorkerMirroredStrategy (2 workers on loopback)
    still fails with one of the errors the fix works around; when it no longer does, the fix can go."""
    from keras_repro.fit.multi_worker import NEWEST_KERAS_NEEDING_FIX

    workers = _run_workers([tmp_path / "unfixed.h5"] * 2, fix=False)
    unfixed = [w for w in workers if "FIT_ERROR" not in w]
    assert not unfixed, (
        f"Keras {keras.__version__} now trains under MultiWorkerMirroredStrategy without the fix: raise the "
        f"version bound NEWEST_KERAS_NEEDING_FIX {NEWEST_KERAS_NEEDING_FIX} in keras_repro/fit/multi_worker.py, or retire "
        f"the fix (keras-team/keras#20585). Worker outputs: {workers}"
    )
    for worker in workers:
        assert any(known in worker["FIT_ERROR"] for known in KERAS_MULTI_WORKER_ERRORS), (
            f"fit without the fix fails with another error than the ones the fix works around: {worker['FIT_ERROR']}"
        )


@pytest.mark.slow
def test_jax_data_parallel_records_then_verifies_in_a_new_process(tmp_path):
    """Keras DataParallel on 2 JAX host devices: a fit records, a new interpreter verifies, seed 8 is detected."""
    env = _env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    record = _run("jax_data_parallel.py", tmp_path, 7, env=env)
    assert record["DEVICES"] == "2" and record["KERNEL_DEVICES"] == "2 True"
    assert (record["MODE"], record["DIVERGENCE"]) == ("record", "None")
    copies = record["REPLICA_DIGESTS"].split()
    assert len(copies) == 2 and copies[0] == copies[1]
    assert load_fingerprints(tmp_path / "jax.h5").batches
    verify = _run("jax_data_parallel.py", tmp_path, 7, env=env)
    assert (verify["MODE"], verify["DIVERGENCE"]) == ("verify", "None")
    assert verify["EPOCHS"] == record["EPOCHS"] and verify["INITIAL"] == record["INITIAL"]
    other = _run("jax_data_parallel.py", tmp_path, 8, env=env)
    assert other["DIVERGENCE"].startswith("initial state (before the first step of epoch 0)")


@pytest.mark.slow
def test_a_drifted_replica_is_named_with_its_variable():
    """MirroredStrategy: replicas in sync pass; one device's copy nudged is reported with replica, variable and epoch."""
    result = _run("replicas.py")
    assert result["CLEAN_DIVERGENCE"] == "None"  # unsynchronized BatchNormalization statistics are not drift
    clean = result["CLEAN_REPLICAS"].split()
    assert len(clean) == 2 and clean[0] == clean[1]

    target = result["TARGET"]
    assert result["RAISED"] == "True"
    assert result["FOUND"] == f"1 epoch trainable {target} 1"
    assert f"epoch 1, replica 1: trainable weights differ, first at '{target}'" in result["MESSAGE"]
    assert "CPU:1" in result["MESSAGE"]
    assert result["EPOCHS_DONE"] == "2"
    assert result["DRIFTED_KEYS"] == "0 1"
    drifted = result["DRIFTED_REPLICAS"].split()
    assert len(drifted) == 2 and drifted[0] != drifted[1]
    direct, _, message = result["DIRECT"].partition(" | ")
    assert direct == f"1 trainable {target}"
    assert f"replica 1: trainable weights differ, first at '{target}'" in message
    assert (result["PLAIN_KEYS"], result["PLAIN_DIVERGENCE"]) == ("0", "None")

    assert result["EARLY_WARNED"] == "True"
    assert result["EARLY_FOUND"] == f"0 initial trainable {result['EARLY_TARGET']} 1"
    assert result["EARLY_MESSAGE"].startswith("initial state (before the first step of epoch 0), replica 1:")


# Two JAX processes on loopback (CPU, gloo collectives; DataParallel on two devices each,
# ModelParallel on one each): four runs of two processes in all, shared by the tests below.


@pytest.fixture(scope="module")
def jax_data_parallel(tmp_path_factory):
    """(folder, record, check): DataParallel over two processes: a run recording dp.h5 (and
    a checkpoint after epoch 0), then new processes verifying, resuming, and the failures."""
    folder = tmp_path_factory.mktemp("jax_dp")
    record = _run_jax_processes(folder, "dp-record")
    return folder, record, _run_jax_processes(folder, "dp-check")


@pytest.fixture(scope="module")
def jax_model_parallel(tmp_path_factory):
    """(folder, record, check): ModelParallel with kernels split across the two processes."""
    folder = tmp_path_factory.mktemp("jax_mp")
    record = _run_jax_processes(folder, "mp-record")
    return folder, record, _run_jax_processes(folder, "mp-check")


@pytest.mark.slow
def test_jax_processes_record_once_from_process_0(jax_data_parallel):
    """DataParallel over 2 JAX processes: both see the same fingerprints, process 0 alone writes
    the file, which records the process count and the mesh."""
    folder, record, _ = jax_data_parallel
    assert [r["PROCESS"] for r in record] == ["0 2", "1 2"]
    assert record[0]["KERNEL"] == "64x32 64x32 False"  # replicated on the devices of both processes
    devices = [set(r["REPLICA_DEVICES"].split()) for r in record]  # each process checks its own copies
    assert [len(d) for d in devices] == [2, 2] and not devices[0] & devices[1]
    assert [(r["MODE"], r["DIVERGENCE"]) for r in record] == [("record", "None")] * 2
    assert record[0]["INITIAL"] == record[1]["INITIAL"] and record[0]["EPOCHS"] == record[1]["EPOCHS"]
    recorded = load_fingerprints(folder / "dp.h5")
    assert " ".join(fp.digest for fp in recorded.epochs) == record[0]["EPOCHS"]
    assert len({next(r.digest for r in fp.part("data") if r.path == "order") for fp in recorded.epochs}) == 3
    assert recorded.batches
    environment = recorded.environment
    assert (environment["process_count"], environment["distribution"]) == ("2", "DataParallel")
    assert environment["distribution.mesh"] == "batch=4"  # 2 processes x 2 devices
    assert os.listdir(folder / "p1") == []  # process 1 neither wrote nor locked its own path


@pytest.mark.slow
def test_jax_processes_verify_in_new_processes_and_agree_on_a_mismatch(jax_data_parallel):
    """New processes verify the recording bit for bit; with seed 8, process 0 finds the mismatch
    in the file, and process 1, which never reads it, raises the same error."""
    folder, record, check = jax_data_parallel
    assert (check[0]["MODE"], check[0]["DIVERGENCE"], check[1]["DIVERGENCE"]) == ("verify", "None", "None")
    assert check[0]["EPOCHS"] == check[1]["EPOCHS"] == record[0]["EPOCHS"]
    assert check[0]["INITIAL"] == record[0]["INITIAL"]
    assert [c["OTHER_FOUND"] for c in check] == ["0 initial data order None"] * 2
    assert check[0]["OTHER_MISMATCH"] == check[1]["OTHER_MISMATCH"]
    assert f"reference: '{folder / 'dp.h5'}'" in check[1]["OTHER_MISMATCH"] and "seed 8" in check[1]["OTHER_MISMATCH"]
    assert os.listdir(folder / "p1") == []


@pytest.mark.slow
def test_jax_processes_resume_from_a_checkpoint_as_the_straight_run(jax_data_parallel):
    """One epoch saved to a .keras file, loaded in new processes and fit from epoch 1 on: the
    epochs equal the straight run's, verified against its file."""
    _, record, check = jax_data_parallel
    straight = record[0]["EPOCHS"].split()
    assert record[0]["FIRST_EPOCHS"] == record[1]["FIRST_EPOCHS"] == straight[0]
    assert (check[0]["RESUMED_MODE"], check[0]["RESUMED_DIVERGENCE"]) == ("verify", "None")
    assert check[1]["RESUMED_DIVERGENCE"] == "None"
    assert check[0]["RESUMED_EPOCHS"].split() == check[1]["RESUMED_EPOCHS"].split() == straight[1:]


@pytest.mark.slow
def test_jax_drift_in_one_process_is_named_with_process_and_variable(jax_data_parallel):
    """One ulp added to process 1's copy of a replicated kernel after epoch 0 (no reference):
    both processes stop at epoch 0, naming process 1 and the variable."""
    _, _, check = jax_data_parallel
    target = check[0]["DRIFT_TARGET"]
    assert [c["DRIFT_FOUND"] for c in check] == [f"0 epoch trainable {target} 1"] * 2
    assert all(f"epoch 0, process 1: trainable weights differ, first at '{target}'" in c["DRIFT_MISMATCH"] for c in check)
    assert check[0]["DRIFT_INITIAL"] == check[1]["DRIFT_INITIAL"]
    assert check[0]["DRIFT_EPOCHS"] != check[1]["DRIFT_EPOCHS"]  # the copies did drift apart


@pytest.mark.slow
def test_jax_sharded_variables_are_fingerprinted_whole(jax_model_parallel, jax_data_parallel):
    """ModelParallel, kernels split across the 2 processes: each process's digest of a kernel is
    the digest of the whole kernel gathered, and the initial state (whole variables) is the same
    as under DataParallel; the file records the layout."""
    folder, record, _ = jax_model_parallel
    assert record[0]["KERNEL"] == record[1]["KERNEL"] == "64x32 64x16 False"  # each process holds half
    for process in record:
        shape_rows, shape_columns, whole = process["KERNEL_WHOLE"].split()
        assert (shape_rows, shape_columns) == ("64", "32") and process["KERNEL_RECORDED"] == whole
        lanes = process["KERNEL_CHECKSUM"].split()  # batch checksums cover the whole kernel too
        assert len(lanes) == 4 and lanes[:2] == lanes[2:]
    assert [(r["MODE"], r["DIVERGENCE"]) for r in record] == [("record", "None")] * 2
    assert record[0]["EPOCHS"] == record[1]["EPOCHS"]
    assert record[0]["INITIAL"] == jax_data_parallel[1][0]["INITIAL"]
    recorded = load_fingerprints(folder / "mp.h5")
    assert recorded.batches and " ".join(fp.digest for fp in recorded.epochs) == record[0]["EPOCHS"]
    environment = recorded.environment
    assert (environment["process_count"], environment["distribution"]) == ("2", "ModelParallel")
    assert environment["distribution.mesh"] == "batch=1, model=2"
    assert ".*d1/kernel: (None, 'model')" in environment["distribution.layout_map"]
    assert os.listdir(folder / "p1") == []


@pytest.mark.slow
def test_jax_sharded_run_verifies_and_a_changed_shard_is_found_by_both(jax_model_parallel):
    """ModelParallel in new processes, mode="verify" in both: identical; seed 8 detected; one ulp
    in process 1's half of the kernel is found by process 0 too, which does not hold that half."""
    _, record, check = jax_model_parallel
    assert [(c["MODE"], c["DIVERGENCE"]) for c in check] == [("verify", "None")] * 2
    assert check[0]["EPOCHS"] == check[1]["EPOCHS"] == record[0]["EPOCHS"]
    assert [c["OTHER_FOUND"] for c in check] == ["0 initial data order None"] * 2
    assert [c["SHARD_FOUND"] for c in check] == [f"0 epoch trainable {check[0]['SHARD_TARGET']} None"] * 2
