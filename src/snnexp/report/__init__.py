"""What a run reports: metrics.py (an epoch's numbers), tensorboard.py (TensorBoard), activity.py (spikes and
synaptic operations of a test pass), cost.py (footprint, sparsity, energy), compare.py (`snnexp compare`),
columns.py (its printed table), sweep.py (the table at a sweep's end), hparams.py (the HPARAMS table of a log
folder), neurobench.py (NeuroBench's harness on a snnexp network)."""
