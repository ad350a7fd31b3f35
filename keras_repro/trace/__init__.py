"""Layer traces: where in the model two runs part ways.

`trace_layers` trains a few steps of a compiled model as `fit` runs them, on a copy of its state, and
records per step in execution order each layer's output, the loss, each gradient and each
variable after the update (`record`); `store` writes and reads the trace file (HDF5, format
"keras_repro.trace"); `compare` names the first entry that differs between two traces and
what kind of computation it is. `capture` wraps the layers' calls and keeps the state.
"""
