"""What a run reports: metrics.py (an epoch's numbers), tensorboard.py (TensorBoard), activity.py (spikes and
synaptic operations of a test pass), cost.py (footprint, sparsity, energy), compare.py (`snnexp compare`),
neurobench.py (NeuroBench's harness on a snnexp network)."""
