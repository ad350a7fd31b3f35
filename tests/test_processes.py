"""Multi-process agreement and data sharding, without starting processes: the gathers of
`keras_repro.fit.processes` run against simulated peers, the process share against stand-in
Keras distributions. The real two-process runs are in test_distributed.py."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest

from keras_repro import _backend
from keras_repro.fingerprinting.compare import Divergence
from keras_repro.fingerprinting.digests import VariableDigest, make_fingerprint
from keras_repro.fingerprinting.environment import distribution_layout
from keras_repro.fit import feeding, processes

pytestmark = [pytest.mark.backends, pytest.mark.unit]  # tests/matrix.py runs this module on JAX and torch too


class Peers:
    """Simulated processes for `gather_from_processes`: this process is 0, the others answer
    each gather with what `answer(call, array)` says they pass."""

    def __init__(self, count: int, answer) -> None:
        self.count, self.answer, self.calls = count, answer, 0

    def gather(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array)
        others = [np.asarray(self.answer(self.calls, k, array), array.dtype) for k in range(1, self.count)]
        self.calls += 1
        return np.stack([array, *others])


def _use(monkeypatch, peers: Peers) -> None:
    monkeypatch.setattr(_backend, "process_count", lambda: peers.count)
    monkeypatch.setattr(_backend, "gather_from_processes", peers.gather)


def _fingerprint(*digests: str):
    records = [VariableDigest(f"d{i}/kernel", "trainable", "float32", (2,), digest) for i, digest in enumerate(digests)]
    return make_fingerprint(records)


def test_one_process_gathers_nothing(monkeypatch):
    def refuse(array):
        raise AssertionError("no gather with one process")

    monkeypatch.setattr(_backend, "gather_from_processes", refuse)
    assert processes.process_count() == 1
    assert processes.process_divergence(_fingerprint("aa" * 32), 0, "epoch") is None
    assert processes.agree(None) is None
    assert processes.agree({"x": 1}) == (0, {"x": 1})


def test_equal_processes_agree_and_a_drifted_one_is_named(monkeypatch):
    """Both directions: identical digests in all processes pass; a different digest in process
    2 for the second variable is named with that process, variable and both digests."""
    mine = _fingerprint("11" * 32, "22" * 32)
    _use(monkeypatch, Peers(3, lambda call, k, array: array))
    assert processes.process_divergence(mine, 1, "epoch") is None

    def drift(call, k, array):
        if array.ndim == 2 and k == 2:
            array = array.copy()
            array[1, 0] ^= 1
        return array

    _use(monkeypatch, Peers(3, drift))
    found = processes.process_divergence(mine, 1, "epoch")
    assert (found.epoch, found.part, found.variable, found.process) == (1, "trainable", "d1/kernel", 2)
    assert found.reference_digest == "22" * 32 and found.other_digest == "23" + "22" * 31
    assert str(found).startswith("epoch 1, process 2: trainable weights differ, first at 'd1/kernel'")
    assert processes.process_divergence(mine, 1, "epoch", ignore={"d1/kernel"}) is None


def test_processes_with_other_variables_are_named(monkeypatch):
    mine = _fingerprint("11" * 32, "22" * 32)
    _use(monkeypatch, Peers(2, lambda call, k, array: array + 1 if array.dtype == np.int64 else array))
    found = processes.process_divergence(mine, None, "initial")
    assert found.process == 1 and "process 1 has 3 variables, process 0 2" in found.reason


def test_agree_gives_every_process_the_first_verdict(monkeypatch):
    """Only process 1 found something: process 0 learns it, with its wording intact."""
    divergence = Divergence(2, "epoch", "optimizer", "adam/iteration", reason="values differ")
    verdict = processes.divergence_verdict(divergence, "/shared/run.h5", "a cause")
    payload = np.frombuffer(__import__("json").dumps(verdict).encode(), np.uint8)

    def peer(call, k, array):
        if call == 0:
            return [payload.size]
        padded = np.zeros(array.size, np.uint8)
        padded[: payload.size] = payload
        return padded

    _use(monkeypatch, Peers(2, peer))
    process, found = processes.agree(None)
    assert process == 1 and processes.divergence_of(found) == (divergence, "/shared/run.h5", "a cause")
    _use(monkeypatch, Peers(2, lambda call, k, array: [0] if call == 0 else np.zeros(array.size, np.uint8)))
    assert processes.agree(None) is None


def test_together_raises_everywhere_when_one_process_could_not_open_the_file(monkeypatch):
    from keras_repro.errors import ReferenceFileError

    message = np.frombuffer(b'{"error": "no such file"}', np.uint8)
    _use(monkeypatch, Peers(2, lambda call, k, array: [message.size] if call == 0 else np.pad(message, (0, array.size - message.size))))
    closed = []
    with pytest.raises(ReferenceFileError, match="process 1 could not use it: no such file"):
        processes.together(lambda: None, "run.h5", lambda: closed.append(True))
    assert closed == [True]
    _use(monkeypatch, Peers(2, lambda call, k, array: [0] if call == 0 else np.zeros(array.size, np.uint8)))
    with pytest.raises(ReferenceFileError, match="missing here"):  # the process's own error, as it was
        processes.together(lambda: (_ for _ in ()).throw(ReferenceFileError("run.h5", "missing here")), "run.h5")


def _distribution(processes_count: int, replicas: int, shard: int, auto_shard: bool = False):
    mesh = types.SimpleNamespace(axis_names=("batch", "model"), shape=(replicas, 2))
    return types.SimpleNamespace(num_processes=processes_count, num_model_replicas=replicas, data_shard_id=shard,
                                 auto_shard_dataset=auto_shard, device_mesh=mesh, batch_dim_name="batch")


@pytest.mark.parametrize(("count", "replicas", "shard", "share"), [
    (1, 1, 0, (1, 0)),  # one process: the whole batch
    (2, 2, 1, (2, 1)),  # DataParallel: one part per process
    (4, 8, 3, (4, 3)),  # several replicas per process
    (2, 1, 0, (1, 0)),  # one replica over both processes: both feed the whole batch
    (4, 2, 1, (2, 1)),  # two replicas of two processes each
])
def test_process_share_cuts_batches_as_keras_cuts_tf_data(monkeypatch, count, replicas, shard, share):
    monkeypatch.setattr(keras.distribution, "distribution", lambda: _distribution(count, replicas, shard))
    assert feeding.process_share() == share


def test_each_process_feeds_its_part_of_the_same_global_batches(monkeypatch):
    x = np.arange(12).reshape(12, 1)
    feed = feeding.EpochFeed(np.arange(12), np.arange(0), seed=7, shuffle=True, batch_size=4)
    parts = []
    for process in (0, 1):
        monkeypatch.setattr(keras.distribution, "distribution", lambda p=process: _distribution(2, 2, p))
        batches = feeding.OrderedBatches((x,), feed)
        parts.append([batches[i][0].ravel().tolist() for i in range(len(batches))])
    order = feed.rows(0).tolist()
    assert [a + b for a, b in zip(*parts)] == [order[i : i + 4] for i in range(0, 12, 4)]
    assert parts[0] != parts[1]


def test_uneven_batches_are_refused():
    feeding.check_share(12, 4, 2)
    feeding.check_share(10, 4, 2)  # a last batch of 2 rows: 1 each
    with pytest.raises(ValueError, match="batch of 1 rows.*multiples of 2"):
        feeding.check_share(9, 4, 2)
    with pytest.raises(ValueError, match="batch of 5 rows"):
        feeding.check_share(10, 5, 2)


def test_keras_auto_sharding_is_off_only_while_keras_repro_feeds(monkeypatch):
    distribution = _distribution(2, 2, 0, auto_shard=True)
    monkeypatch.setattr(keras.distribution, "distribution", lambda: distribution)
    with feeding.fed_by_process():
        assert distribution.auto_shard_dataset is False
    assert distribution.auto_shard_dataset is True


def test_the_layout_is_described(monkeypatch):
    monkeypatch.setattr(keras.distribution, "distribution", lambda: None)
    assert distribution_layout() == {}
    distribution = _distribution(2, 1, 0)
    distribution._layout_map = {".*d1/kernel": types.SimpleNamespace(axes=(None, "model"))}
    monkeypatch.setattr(keras.distribution, "distribution", lambda: distribution)
    assert distribution_layout() == {
        "distribution": "SimpleNamespace", "distribution.mesh": "batch=1, model=2", "distribution.batch_dim": "batch",
        "distribution.layout_map": ".*d1/kernel: (None, 'model')",
    }
