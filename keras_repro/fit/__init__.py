"""What a fit does: its context, data order and feeding, initial weights, RNG state, the batches fed, batch checks, processes."""
