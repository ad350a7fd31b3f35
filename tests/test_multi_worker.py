"""`kr.fix_multi_worker_fit`, without training: it patches Keras' TensorFlow trainer once,
only on the Keras versions it was tested with (unless forced), and only on the TensorFlow
backend. The two-worker runs with and without it are in tests/test_distributed.py."""

from __future__ import annotations

import warnings

import keras
import pytest

import keras_repro as kr
from keras_repro import _backend
from keras_repro.errors import ReproWarning
from keras_repro.fit import multi_worker

pytestmark = pytest.mark.backends  # tests/matrix.py runs this module on JAX and torch too

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"


@pytest.fixture
def trainer(monkeypatch):
    """Keras' TensorFlow trainer module, unpatched; the fix's changes are undone after the test."""
    if not ON_TENSORFLOW:
        pytest.skip("the fix patches the TensorFlow trainer (tests of other backends below)")
    from keras.src.backend.tensorflow import trainer

    assert not getattr(trainer.reduce_per_replica, multi_worker._MARK, False), "patched before the test"
    monkeypatch.setattr(trainer, "reduce_per_replica", trainer.reduce_per_replica)
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build", trainer.TensorFlowTrainer._maybe_symbolic_build)
    return trainer


def _functions(trainer) -> tuple:
    return trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build


@pytest.mark.unit
def test_the_fix_is_exported_lazily():
    assert kr.fix_multi_worker_fit is multi_worker.fix_multi_worker_fit
    assert "fix_multi_worker_fit" in kr.__all__


@pytest.mark.unit
def test_the_fix_patches_keras_once(trainer):
    """Applied: both functions replaced; a second call keeps the same replacements."""
    original = _functions(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kr.fix_multi_worker_fit() is True
    patched = _functions(trainer)
    assert all(new is not old for new, old in zip(patched, original))
    assert kr.fix_multi_worker_fit() is True
    assert all(new is same for new, same in zip(_functions(trainer), patched))


@pytest.mark.unit
def test_the_fix_leaves_runs_that_are_not_multi_worker_to_keras(trainer, monkeypatch):
    """Outside multi-worker mode (here: the default strategy) the replacements call Keras' own functions."""
    import tensorflow as tf

    calls = []
    monkeypatch.setattr(trainer, "reduce_per_replica", lambda *args: calls.append(("reduce", args)) or "kept")
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build",
                        lambda self, iterator=None, data_batch=None: calls.append(("build", iterator, data_batch)))
    assert kr.fix_multi_worker_fit() is True
    strategy = tf.distribute.get_strategy()
    assert trainer.reduce_per_replica({"loss": 1.0}, strategy, "auto") == "kept"

    class Model:
        _distribute_strategy = strategy

    batches = [(0, 1, iter(["batch"]))]
    trainer.TensorFlowTrainer._maybe_symbolic_build(Model(), iterator=batches)
    assert calls == [("reduce", ({"loss": 1.0}, strategy, "auto")), ("build", batches, None)]


@pytest.mark.parametrize("version", ["3.16.0", "4.0.0", "3.16.0.dev2026113003", "nightly"])
@pytest.mark.unit
def test_an_untested_keras_is_not_patched_unless_forced(trainer, monkeypatch, version):
    """A Keras newer than NEWEST_KERAS_NEEDING_FIX (or of an unreadable version): nothing patched, a warning at
    the caller's line naming the version and force=True; force=True patches."""
    monkeypatch.setattr(keras, "__version__", version)
    original = _functions(trainer)
    with pytest.warns(ReproWarning, match=r"did not patch Keras .*tested up to Keras 3\.15\.x.*force=True") as caught:
        assert kr.fix_multi_worker_fit() is False
    assert version in str(caught[0].message) and caught[0].filename == __file__
    assert _functions(trainer) == original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kr.fix_multi_worker_fit(force=True) is True
    assert all(new is not old for new, old in zip(_functions(trainer), original))


@pytest.mark.parametrize("version", ["3.0.0", "3.15.1", "3.15.99"])
@pytest.mark.unit
def test_keras_up_to_the_bound_is_patched(trainer, monkeypatch, version):
    """The bound takes every patch release of the newest version tested."""
    assert multi_worker.NEWEST_KERAS_NEEDING_FIX == (3, 15)
    monkeypatch.setattr(keras, "__version__", version)
    original = _functions(trainer)
    assert kr.fix_multi_worker_fit() is True
    assert all(new is not old for new, old in zip(_functions(trainer), original))


@pytest.mark.unit
def test_a_keras_without_the_patched_functions_is_refused_even_forced(trainer, monkeypatch):
    monkeypatch.delattr(trainer, "_collective_all_reduce_multi_worker")
    original = _functions(trainer)
    with pytest.raises(RuntimeError, match=r"does not fit Keras .* no _collective_all_reduce_multi_worker\. Nothing"):
        kr.fix_multi_worker_fit(force=True)
    assert _functions(trainer) == original


@pytest.mark.unit
def test_another_backend_is_refused(monkeypatch):
    """Where Keras' trainer does not run under tf.distribute, the call is an error naming the backend."""
    monkeypatch.setattr(_backend, "trains_under_tf_distribute", lambda: False)
    monkeypatch.setattr(_backend, "name", lambda: "jax")
    with pytest.raises(RuntimeError, match="Keras runs on the 'jax' backend.*KERAS_BACKEND=tensorflow"):
        kr.fix_multi_worker_fit(force=True)


@pytest.mark.skipif(ON_TENSORFLOW, reason="runs in the fast suite of the JAX and PyTorch backends")
def test_the_real_other_backend_is_refused():
    with pytest.raises(RuntimeError, match=f"Keras runs on the '{keras.backend.backend()}' backend"):
        kr.fix_multi_worker_fit()
