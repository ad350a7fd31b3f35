"""Tests for keras_repro.fingerprinting.digests."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from keras_repro import fingerprint
from keras_repro.fingerprinting import digests as fp_module
from keras_repro.fingerprinting.digests import PARTS, data_record, hash_array, make_fingerprint
from tests.conftest import make_data, make_model, run_python

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too


def _trained(seed=7, epochs=1):
    model = make_model(seed)
    x, y = make_data()
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def _nudge(variable, index=0):
    """Moves one element of a float32 variable by one ulp."""
    values = keras.ops.convert_to_numpy(variable).copy()
    flat = values.reshape(-1)
    flat[index] = np.nextafter(flat[index], np.float32(np.inf))
    variable.assign(values)


def test_same_state_same_digest_and_parts():
    """Fingerprinting twice gives the same digest; every part is present after training."""
    model = _trained()
    first, second = fingerprint(model), fingerprint(model)
    assert first.digest == second.digest and first.variables == second.variables
    assert set(first.parts) == {"rng", "trainable", "non_trainable", "optimizer"}
    assert len(first.digest) == 64


def test_one_ulp_in_any_variable_changes_that_variable_only():
    """One ulp in a weight changes the digest, its part and that variable's entry alone."""
    model = _trained()
    before = fingerprint(model)
    target = model.layers[1].moving_variance  # a non-trainable weight
    _nudge(target, index=1)
    after = fingerprint(model)
    assert after.digest != before.digest
    changed = [path for path in before.variables if before.variables[path] != after.variables[path]]
    assert changed == [target.path]
    assert after.parts["non_trainable"] != before.parts["non_trainable"]
    assert after.parts["trainable"] == before.parts["trainable"]


@pytest.mark.parametrize("part", ["trainable", "optimizer", "rng"])
def test_each_part_detects_its_own_change(part):
    """A changed trainable weight, optimizer slot or SeedGenerator state is found in its part."""
    model = _trained()
    before = fingerprint(model)
    variables = [v for p, v in fp_module.model_variables(model) if p == part]
    target = variables[-1]
    values = keras.ops.convert_to_numpy(target).copy()
    if values.dtype.kind == "f":
        values.reshape(-1)[0] = np.nextafter(values.reshape(-1)[0], np.inf)
    else:
        values.reshape(-1)[-1] += 1
    target.assign(values)
    after = fingerprint(model)
    assert [p for p in PARTS if before.parts.get(p) != after.parts.get(p)] == [part]


@pytest.mark.unit
def test_digest_ignores_auto_generated_names():
    """Two identically seeded models built one after the other ("dense" vs "dense_1") match."""
    first = make_model(seed=3)
    second = make_model(seed=3)
    assert first.variables[0].path != second.variables[0].path  # Keras renamed the layers
    assert fingerprint(first).digest == fingerprint(second).digest
    assert fingerprint(make_model(seed=4)).digest != fingerprint(first).digest


def test_paths_are_reported_for_display():
    """Variables are keyed by their Keras path; SeedGenerators by their layer."""
    model = _trained()
    paths = list(fingerprint(model).variables)
    assert model.trainable_weights[0].path in paths
    assert any(p.endswith("dropout/seed_generator") for p in paths)
    assert any(p.startswith("adam/") for p in paths)


def test_same_digest_in_fresh_processes_with_other_hash_seeds():
    """The same seed gives the same digest in new interpreters under any PYTHONHASHSEED."""
    code = """
        from tests.conftest import make_model, make_data
        from keras_repro import fingerprint
        model = make_model(5)
        x, y = make_data()
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
        print(fingerprint(model).digest)
    """
    digests = [run_python(code, env={"PYTHONHASHSEED": s}).stdout.strip().splitlines()[-1] for s in ("0", "random")]
    assert digests[0] == digests[1]
    other = run_python(code.replace("make_model(5)", "make_model(6)")).stdout.strip().splitlines()[-1]
    assert other != digests[0]


@pytest.mark.unit
def test_hash_array_defined_byte_order():
    """Big-endian input hashes like its little-endian equal; a changed byte does not."""
    little = np.arange(10, dtype="<f4")
    big = little.astype(">f4")
    assert hash_array(little, b"h") == hash_array(big, b"h")
    changed = little.copy()
    changed[3] = np.nextafter(changed[3], np.float32(np.inf))
    assert hash_array(changed, b"h") != hash_array(little, b"h")
    assert hash_array(little, b"h") != hash_array(little, b"g")


@pytest.mark.unit
def test_hash_array_is_independent_of_chunking_threads(monkeypatch):
    """Parallel chunk hashing gives the value a sequential definition gives."""
    import concurrent.futures

    monkeypatch.setattr(fp_module, "CHUNK_BYTES", 64)
    array = np.arange(1000, dtype="float32")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        parallel = hash_array(array, b"h", pool)
    sequential = hash_array(array, b"h")
    raw = array.tobytes()
    expected = hashlib.sha256(b"h" + len(raw).to_bytes(8, "little"))
    for start in range(0, len(raw), 64):
        expected.update(hashlib.sha256(raw[start : start + 64]).digest())
    assert parallel == sequential == expected.hexdigest()


@pytest.mark.unit
def test_non_contiguous_and_empty_arrays():
    """A transposed view hashes like its contiguous copy; empty arrays hash too."""
    array = np.arange(12, dtype="float32").reshape(3, 4)
    assert hash_array(array.T, b"h") == hash_array(np.ascontiguousarray(array.T), b"h")
    assert len(hash_array(np.zeros((0, 3), "float32"), b"h")) == 64


def test_large_variable_uses_chunks(monkeypatch):
    """A variable larger than a chunk is hashed through the thread pool and still matches."""
    monkeypatch.setattr(fp_module, "CHUNK_BYTES", 32)
    model = _trained()
    first = fingerprint(model)
    assert first.digest == fingerprint(model).digest
    monkeypatch.setattr(fp_module, "CHUNK_BYTES", 1 << 22)
    assert fingerprint(model).digest != first.digest  # the chunk size is part of the definition


def _by_definition(part, index, value):
    """A variable digest computed from the documented definition, with hashlib only."""
    value = np.asarray(value)
    raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
    header = f"{part}\0{index}\0{value.dtype.name}\0{tuple(value.shape)}\0".encode()
    hasher = hashlib.sha256(header + len(raw).to_bytes(8, "little"))
    for start in range(0, len(raw), fp_module.CHUNK_BYTES):
        hasher.update(hashlib.sha256(raw[start : start + fp_module.CHUNK_BYTES]).digest())
    return hasher.hexdigest()


def test_every_record_follows_the_definition():
    """Each variable digest (scalars included: the optimizer's iteration and learning rate)
    equals one computed independently from (part, index, dtype, shape, bytes)."""
    model = _trained()
    result = fingerprint(model)
    counters = {}
    expected = []
    for part, variable in fp_module.model_variables(model):
        index = counters.setdefault(part, 0)
        counters[part] += 1
        value = keras.ops.convert_to_numpy(variable)
        expected.append((part, tuple(value.shape), _by_definition(part, index, value)))
    got = {(r.part, r.shape, r.digest) for r in result.records}
    assert got == set(expected)
    assert any(shape == () for _, shape, _ in expected)  # scalars are covered


@pytest.mark.parametrize("workers, chunk, in_flight", [(1, 1 << 22, 1 << 23), (2, 64, 1), (3, 256, 1 << 30)])
def test_threads_chunks_and_queue_depth_do_not_change_digests(monkeypatch, workers, chunk, in_flight):
    """Sequential, threaded with a tiny in-flight budget (one variable at a time) or with an
    unbounded one: the same records as the definition computed by hand."""
    model = _trained()
    monkeypatch.setattr(fp_module, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(fp_module, "_workers", lambda: workers)
    monkeypatch.setattr(fp_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(fp_module, "IN_FLIGHT_MIN_BYTES", in_flight)
    monkeypatch.setattr(fp_module, "_pool", None)
    result = fingerprint(model, summaries=True)
    expected = {}
    counters = {}
    for part, variable in fp_module.model_variables(model):
        index = counters.setdefault(part, 0)
        counters[part] += 1
        value = keras.ops.convert_to_numpy(variable)
        expected[_by_definition(part, index, value)] = (part, tuple(value.shape), fp_module.summarize(value))
    assert {r.digest: (r.part, r.shape, r.stats) for r in result.records} == expected
    assert len(result.records) == len(expected)


def test_with_records_and_without():
    """Adding a data record changes the digest; removing it restores it."""
    model = _trained()
    base = fingerprint(model)
    with_data = base.with_records([data_record("order", np.arange(5))])
    assert with_data.digest != base.digest and with_data.parts["data"]
    kept = [record for record in with_data.records if record.part != "data"]
    assert make_fingerprint(kept).digest == base.digest
    reordered = base.with_records([data_record("order", np.arange(5)[::-1])])
    assert reordered.parts["data"] != with_data.parts["data"]


@pytest.mark.unit
def test_make_fingerprint_rejects_unknown_parts():
    """Records must belong to a known part."""
    record = fp_module.VariableDigest("x", "weights", "float32", (), "0" * 64)
    with pytest.raises(ValueError, match="Unknown fingerprint part"):
        make_fingerprint([record])


@pytest.mark.unit
def test_repeated_paths_are_disambiguated():
    """Two variables with one path both appear in `.variables`."""
    records = [fp_module.VariableDigest("a/b", "trainable", "float32", (), d * 64) for d in "01"]
    assert list(make_fingerprint(records).variables) == ["a/b", "a/b#2"]


def test_reads_are_zero_copy_views_on_cpu():
    """Fingerprinting adds no memory on CPU: two reads of a variable share its buffer (a copy
    per read would hold an extra largest-variable in memory, as `.numpy()` does on TF)."""
    from keras_repro import _backend

    model = _trained()
    for _, variable in fp_module.model_variables(model):
        if int(np.prod(variable.shape)) > 0:
            assert np.shares_memory(_backend.to_numpy(variable), _backend.to_numpy(variable)), variable.path
