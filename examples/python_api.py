"""snnexp from Python: compose a config, train it, load the run, read its curves and test it again.

    python examples/python_api.py [run folder]     (default: outputs/python_api)

The same runs as the command line: `tensorboard --logdir outputs` shows this one beside the others."""

import logging
import sys

import snnexp

logging.basicConfig(level=logging.WARNING)  # INFO: the run's log lines, as `snnexp train` prints them
run_dir = sys.argv[1] if len(sys.argv) > 1 else "outputs/python_api"

# 1. the config `snnexp train neuron=lif trainer.epochs=3` runs with: composed from conf/ and checked
cfg = snnexp.compose(["neuron=lif", "trainer.epochs=3", "trainer.progress=false"])
print(f"dataset {cfg.dataset._target_}, neuron {cfg.neuron._target_} (tau {cfg.neuron.tau}), T {cfg.trainer.T}")

# 2. train it into a run folder: checkpoints, metrics.json, TensorBoard events
metrics = snnexp.fit(cfg, run_dir)
print(f"trained: best test accuracy {100 * metrics['best_test_acc']:.2f}% at epoch {metrics['best_epoch']}")

# 3. load the run (a run folder, or a checkpoint file): config, network, metrics, curves
run = snnexp.load(run_dir)
print(f"loaded {run.checkpoint.name} (epoch {run.epoch}): {sum(p.numel() for p in run.model.parameters())} "
      f"parameters, {run.num_classes} classes, input {run.input_shape}")
for epoch, acc in run.scalars("test/acc"):
    print(f"  epoch {epoch}: test accuracy {100 * acc:.2f}%")
losses = run.scalars("train/loss_step")
print(f"  training loss: {losses[0][1]:.4f} at step {losses[0][0]}, {losses[-1][1]:.4f} at step {losses[-1][0]}")

# 4. test the checkpoint again, as `snnexp eval` does
result = run.evaluate()
print(f"evaluated: test accuracy {100 * result['test_acc']:.2f}%, {result['spikes_per_sample']:.0f} spikes per sample")
