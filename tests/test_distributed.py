"""Distributed training: tf.distribute MirroredStrategy and MultiWorkerMirroredStrategy,
Keras' JAX DataParallel, and the consistency of per-device copies of variables.

Each test runs scripts in tests/scripts/distributed/ in fresh interpreters (devices must
be configured before the framework starts), each bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import keras
import pytest

from keras_repro import load_fingerprints
from tests.conftest import child_env, REPO

SCRIPTS = os.path.join(REPO, "tests", "scripts", "distributed")
TIMEOUT = 150
"""Seconds one script may take (they take 5-20 s on 2 CPU cores)."""


def _env(**extra: str) -> dict:
    """The environment of a script: fixed hash seed, quiet TensorFlow, TensorFlow backend."""
    env = child_env(PYTHONHASHSEED="0", TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


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
    result = subprocess.run(command, capture_output=True, text=True, env=env or _env(), timeout=TIMEOUT, cwd=REPO)
    assert result.returncode == 0, f"{script} {args} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return _parse(result.stdout)


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


def _run_workers(references: list, mode: str = "auto", fix: bool = True) -> list[dict]:
    """Runs the two workers of one MultiWorkerMirroredStrategy cluster at the same time
    (each calling `kr.fix_multi_worker_fit()` first, unless `fix` is False); kills both if
    either fails or they do not finish within the timeout."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index, reference in enumerate(references):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [sys.executable, os.path.join(SCRIPTS, "multi_worker.py"), str(reference), mode, "fix" if fix else "nofix"]
        workers.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(TF_CONFIG=config))
        )
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=TIMEOUT))
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
        details = [worker.communicate() for worker in workers]
        pytest.fail("workers did not finish in time:\n" + "\n".join(err[-2000:] for _, err in details))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    failed = [
        f"worker {index} failed ({worker.returncode}):\n{out}\n{err[-3000:]}"
        for index, (worker, (out, err)) in enumerate(zip(workers, outputs))
        if worker.returncode != 0
    ]
    assert not failed, "\n".join(failed)  # every failing worker: the first error may be in either
    return [_parse(out) for out, _ in outputs]


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
    from keras_repro.multi_worker import NEWEST_KERAS_NEEDING_FIX

    workers = _run_workers([tmp_path / "unfixed.h5"] * 2, fix=False)
    unfixed = [w for w in workers if "FIT_ERROR" not in w]
    assert not unfixed, (
        f"Keras {keras.__version__} now trains under MultiWorkerMirroredStrategy without the fix: raise the "
        f"version bound NEWEST_KERAS_NEEDING_FIX {NEWEST_KERAS_NEEDING_FIX} in keras_repro/multi_worker.py, or retire "
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
