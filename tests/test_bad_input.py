"""Bad input, each case as a user meets it (issue 6): the exact message and exit code, no traceback, and no
damage to what is already there (an earlier run directory and a frame cache, hashed before and after).

Exit codes: 2 bad input (ours), 1 Hydra's own config errors (kept as Hydra words them), 3 numbers that went
non-finite. The table in the issue's closing note comes from CASES."""

import hashlib
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from conftest import run_snnexp
from event_writers import make_cifar10dvs, make_nmnist

DAMAGED_GZ = b"\x1f\x8b\x08 an interrupted copy"  # a gzip header, then nothing of MNIST

SPEC_HELP = ("expected one of: cXkY[sZ][pW] (conv), FCn (linear), MPkXsY / APkXsY (max / avg pool), BN (norm), "
             "SN (neuron), DP or DPp (dropout), {...}*n (repeat)")

# (id, arguments, the message line (exact for ours; a line of Hydra's own message), exit code).
# {w} is the working folder of the test.
CASES = [
    ("transformer blocks negative", ["train", "model=spikformer", "model.depth=-1"],
     "snnexp: error: invalid config:\n  model.depth=-1 is out of range: must be an integer >= 0 (a transformer's "
     "blocks)", 2),
    ("QKFormer stages not numbers", ["train", "model=qkformer", "model.depths=[a,1]"],
     "snnexp: error: invalid config:\n  model.depths=['a', 1] is out of range: must be a list of integers >= 0, the "
     "blocks of each stage (e.g. [1, 1, 2])", 2),
    ("T zero", ["train", "trainer.T=0"],
     "snnexp: error: invalid config:\n  trainer.T=0 is out of range: must be an integer >= 1 (time steps)", 2),
    ("tau below 1", ["train", "neuron=lif", "neuron.tau=0.5"],
     "snnexp: error: invalid config:\n  neuron.tau=0.5 is out of range: must be > 1 (the Euler step with dt = 1 "
     "needs tau > 1)", 2),
    ("ALIF adaptation time constant below 1", ["train", "neuron=alif", "neuron.tau_adapt=0.5"],
     "snnexp: error: invalid config:\n  neuron.tau_adapt=0.5 is out of range: must be > 1 (ALIF's adaptation time "
     "constant in steps; 1/tau_adapt = sigmoid(w))", 2),
    ("ALIF with the fused backend", ["train", "neuron=alif", "neuron.backend=fused"],
     "snnexp: error: invalid config:\n  neuron.backend=fused: ALIF has no fused kernel, only the step-by-step "
     "definition: set neuron.backend=reference", 2),
    ("negative lr", ["train", "optim.lr=-0.1"],
     "snnexp: error: invalid config:\n  optim.lr=-0.1 is out of range: must be > 0", 2),
    ("reset above threshold", ["train", "neuron.v_reset=2.0"],
     "snnexp: error: invalid config:\n  neuron.v_reset=2.0 must be below neuron.v_threshold=1.0 (or null for "
     "soft reset)", 2),
    ("unknown device", ["train", "trainer.device=gpu"],
     "snnexp: error: invalid config:\n  trainer.device='gpu' is out of range: must be auto, cpu, cuda, cuda:N "
     "or mps", 2),
    ("unknown on_nonfinite", ["train", "trainer.on_nonfinite=ignore"],
     "snnexp: error: invalid config:\n  trainer.on_nonfinite='ignore' is out of range: must be stop or skip", 2),
    ("unknown neuron backend", ["train", "neuron.backend=cuda"],
     "snnexp: error: invalid config:\n  neuron.backend='cuda' is out of range: must be fused or reference", 2),
    ("checkpoint every 0 steps", ["train", "trainer.ckpt_every_steps=0"],
     "snnexp: error: invalid config:\n  trainer.ckpt_every_steps=0 is out of range: must be null or an integer "
     ">= 1", 2),
    ("event frames through a spike encoder", ["train", "dataset=nmnist", "encoder=poisson"],
     "snnexp: error: invalid config:\n  this dataset gives event frames, which are fed as they are: use "
     "encoder=direct, not PoissonEncoder", 2),
    # snnexp.keys: the config is composed before the run, and what Hydra refuses is said in one line
    ("unknown option", ["train", "neuron=foo"],
     "snnexp: error: neuron=foo: no such option (neuron's options: alif, if, lif, masked_psn, plif, psn, sliding_psn, "
     "stbp; `snnexp train --help` lists every group)", 2),
    ("wrong type", ["train", "trainer.T=abc"],
     "snnexp: error: Error merging override trainer.T=abc: Value 'abc' of type 'str' could not be converted to "
     "Integer", 2),
    ("misspelt trainer key", ["train", "trainer.tt=4"], "snnexp: error: trainer.tt: trainer has no key 'tt' (its "
     "keys: epochs, batch_size, micro_batch, T, seed, device, amp, channels_last, join_layers, compile, num_workers, "
     "max_steps, progress, print_network, ckpt_every_steps, on_nonfinite, deterministic, threads, strategy)", 2),
    ("misspelt neuron key", ["train", "neuron.tauu=3"],
     "snnexp: error: neuron.tauu: neuron (PLIF) has no key 'tauu'; did you mean neuron.tau0? (its keys: tau0, "
     "decay_input, v_threshold, v_reset, detach_reset, backend)", 2),
    ("malformed spec", ["train", 'model.spec="{c32k-BN-SN}*2-FC10-SN"'],
     "snnexp: error: unknown token 'c32k' at position 1 of model.spec:", 2),
    ("spec with the wrong output", ["train", 'model.spec="c8k3s1-BN-SN"'],
     "snnexp: error: model 'c8k3s1-BN-SN' ends with output shape [8, 8, 8], but the readout needs 10 features "
     "(classes x readout.population). End the spec with FC10-SN, or with FC<classes*10>-SN-APk10s10 for voting, "
     "or change readout.", 2),
    ("voting without a population", ["train", "readout=voting"],
     "snnexp: error: model '{c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10' ends with output shape [10], but the "
     "readout needs 100 features (classes x readout.population). End the spec with FC100-SN, or with "
     "FC<classes*10>-SN-APk10s10 for voting, or change readout.", 2),
    ("eval without a checkpoint", ["eval"],
     "snnexp: error: missing value for 'checkpoint': give it on the command line, e.g. checkpoint=...", 2),
    ("missing checkpoint", ["eval", "checkpoint=nope.pt"], "snnexp: error: checkpoint not found: {w}/nope.pt", 2),
    ("truncated checkpoint", ["eval", "checkpoint=truncated.pt"],
     "snnexp: error: cannot read checkpoint {w}/truncated.pt: not a valid snnexp checkpoint (truncated, or not "
     "written by snnexp train): PytorchStreamReader failed reading zip archive: failed finding central directory",
     2),
    ("foreign checkpoint", ["eval", "checkpoint=foreign.pt"],
     "snnexp: error: {w}/foreign.pt is a torch file but not a snnexp checkpoint (no 'snnexp_checkpoint' key)", 2),
    ("checkpoint that runs code", ["eval", "checkpoint=evil.pt"],
     "snnexp: error: cannot read checkpoint {w}/evil.pt: it is not a snnexp checkpoint: loading it would run Python "
     "code from the file, which snnexp never does (Trying to load unsupported GLOBAL posix.system whose module posix "
     "is blocked)", 2),
    ("negative energy per operation", ["train", "energy.mac_pj=-4.6"],
     "snnexp: error: invalid config:\n  energy.mac_pj=-4.6 is out of range: must be >= 0 (picojoules per "
     "multiply-accumulate)", 2),
    ("neurobench neither true nor false", ["eval", "checkpoint=old/checkpoints/last.pt", "neurobench=yes"],
     "snnexp: error: neurobench='yes': must be true or false", 2),
    ("resume with another network", ["train", "resume=old", "model=mlp"],
     "snnexp: error: {w}/old/checkpoints/last.pt: this resume changes what the run computes (model._target_:", 2),
    ("resume with no earlier run", ["train", "trainer.seed=99", "resume=true"],
     "snnexp: error: resume=true: no earlier run with a checkpoint under {w}/outputs was made with these overrides "
     "(trainer.seed=99); give the run directory instead: resume=PATH", 2),
    ("resume a folder that is no run", ["train", "resume=nowhere"],
     "snnexp: error: resume=nowhere: not a snnexp run directory with a checkpoint (expected nowhere/checkpoints/"
     "last.pt and nowhere/.hydra/overrides.yaml)", 2),
    ("missing dataset", ["train", "dataset=mnist", "dataset.data_dir=nodata", "dataset.download=false"],
     "snnexp: error: MNIST not found: it is not there and dataset.download=false.\n"
     "Put these files in {w}/nodata/MNIST/raw/ (from https://ossci-datasets.s3.amazonaws.com/mnist/):", 2),
    ("corrupt dataset file", ["train", "dataset=nmnist", "dataset.data_dir=corrupt", "trainer.max_steps=1"],
     "snnexp: error: {w}/corrupt/NMNIST/Train/3/0.bin: 7 bytes is not a whole number of 5-byte N-MNIST events "
     "(truncated?) (dataset.on_corrupt=skip leaves such files out)", 2),
    ("damaged MNIST archive", ["train", "dataset=mnist", "dataset.data_dir=damaged"],
     "snnexp: error: {w}/damaged/MNIST/raw/train-images-idx3-ubyte.gz: not the official MNIST file (md5 "
     f"{hashlib.md5(DAMAGED_GZ).hexdigest()}, expected f68b3c2dcbeaaa9fbdd348bbdeb94873): a damaged or incomplete "
     "copy? Get it again from https://ossci-datasets.s3.amazonaws.com/mnist/", 2),
    ("one recording per class", ["train", "dataset=dvs_cifar10", "dataset.data_dir=single"],
     "snnexp: error: the split (dataset.test_fraction=0.1) leaves the test set empty: 3 train / 0 test recordings "
     "(airplane: 1 train / 0 test, cat: 1 train / 0 test, truck: 1 train / 0 test); a class needs 2 or more "
     "recordings to give one to each set: add recordings to dataset.data_dir", 2),
    ("every test file corrupt and skipped", ["train", "dataset=nmnist", "dataset.data_dir=no_test",
                                             "dataset.on_corrupt=skip"],
     "snnexp: error: all 10 samples of nmnist test: events -> 4 frames are in corrupt files, skipped "
     "(dataset.on_corrupt=skip): nothing is left. The first: {w}/no_test/NMNIST/Test/0/00000.bin: 7 bytes is not a "
     "whole number of 5-byte N-MNIST events (truncated?)", 2),
    ("output folder under a file", ["train", "hydra.run.dir=afile/run"],
     "snnexp: error: cannot write the run directory {w}/afile/run: {w}/afile is a file, not a folder; start snnexp "
     "in a folder you can write to, or give hydra.run.dir=DIR", 2),
    ("learning rate that overflows", ["train", "optim.lr=1e36", "trainer.epochs=1"],
     # channels_last (the default since issue 16): its CPU BN overflows on the step-1 weights (~1e36) where the NCHW
     # one did not; with trainer.channels_last=false it is step 13, 9.module (Linear)
     "snnexp: error: non-finite gradient at step 2 (epoch 1, batch 2): it first appears in the output of layer "
     "1 (BatchNormOverTime). Likely causes: a learning rate too high (optim.lr=1e+36); a surrogate gradient "
     "too steep (surrogate.alpha=2.0); NaN or inf in the data. To leave such batches out instead of stopping: "
     "trainer.on_nonfinite=skip; no checkpoint had been written yet", 3),
]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def file_digests(root: Path) -> dict:
    """Every file's hash; a run's log (train.log) may grow, it is not compared."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "train.log"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with an earlier run (`old`), a frame cache, checkpoints gone wrong and corrupt, damaged or
    too small datasets."""
    w = tmp_path_factory.mktemp("bad_input")
    env = {"SNNEXP_CACHE": str(w / "cache")}
    make_nmnist(w / "events", per_digit=1)
    run_snnexp("train", "dataset=nmnist", f"dataset.data_dir={w / 'events'}", "trainer.epochs=1",
               "trainer.max_steps=1", "hydra.run.dir=old", cwd=w, env=env)
    shutil.copytree(w / "events", w / "corrupt")
    (w / "corrupt" / "NMNIST" / "Train" / "3" / "0.bin").write_bytes(b"\x00" * 7)
    shutil.copytree(w / "events", w / "no_test")
    for f in (w / "no_test" / "NMNIST" / "Test").rglob("*.bin"):
        f.write_bytes(b"\x00" * 7)
    (w / "damaged" / "MNIST" / "raw").mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (w / "damaged" / "MNIST" / "raw" / f"{split}-{kind}-ubyte.gz").write_bytes(DAMAGED_GZ)
    make_cifar10dvs(w / "single", per_class=1)
    good = (w / "old" / "checkpoints" / "last.pt").read_bytes()
    (w / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(2)}, w / "foreign.pt")
    (w / "evil.pt").write_bytes(pickle.dumps(Evil(), protocol=2))  # torch.save's protocol
    (w / "afile").write_text("a file where a folder is expected")
    return w, env


@pytest.mark.parametrize("name,args,message,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workdir, name, args, message, code):
    w, env = workdir
    before = {d: file_digests(w / d) for d in ("old", "cache")}
    args = [a.replace("{w}", str(w)) for a in args]
    proc = run_snnexp(*args, cwd=w, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    expected = message.replace("{w}", str(w))
    # whole lines; a message ending in ':' goes on with text from Hydra or torch, left out here
    bounded = expected if expected.endswith(":") else expected + "\n"
    assert ("\n" + bounded) in ("\n" + proc.stderr + "\n" if "snnexp: error:" in expected else "\n" + out + "\n"), \
        f"expected:\n{expected}\ngot:\n{proc.stderr}"
    assert "Traceback" not in out
    assert not (w / "pwned").exists()  # no code ran from the checkpoint
    for d, files in before.items():  # what was there is still there, unchanged (a new cache entry is fine)
        after = file_digests(w / d)
        assert {f: after.get(f) for f in files} == files


def test_there_are_at_least_20_cases():
    assert len(CASES) >= 20


def test_a_folder_a_fifo_or_a_device_as_checkpoint_is_named_for_what_it_is(workdir, tmp_path):
    import threading
    import time

    w, env = workdir
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    # a reader that opened the FIFO would wait for a writer: one comes (and goes) after 20 s, so the test never hangs
    rescue = threading.Timer(20, lambda: os.close(os.open(fifo, os.O_RDWR)))
    rescue.start()
    inside = f"give the checkpoint file inside, e.g. checkpoint={w}/old/checkpoints/best.pt"
    cases = [(["eval", "checkpoint=old"], f"checkpoint {w}/old is a directory: {inside}"),
             (["export", "checkpoint=old/checkpoints"], f"checkpoint {w}/old/checkpoints is a directory: {inside}"),
             (["eval", f"checkpoint={fifo}"], f"checkpoint {fifo} is a FIFO, not a regular file: give a checkpoint "
                                              "file written by snnexp train (.../checkpoints/best.pt)"),
             (["export", "checkpoint=/dev/zero"], "checkpoint /dev/zero is a device, not a regular file")]
    try:
        for args, message in cases:
            start = time.time()
            proc = run_snnexp(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=w, env=env, check=False)
            assert proc.returncode == 2 and time.time() - start < 10
            assert proc.stderr.startswith(f"snnexp: error: {message}") and len(proc.stderr.splitlines()) == 1, \
                proc.stderr
    finally:
        rescue.cancel()


@pytest.mark.parametrize("spec, limit", [("{FC10-SN}*999999999999", "MAX_REPEAT"),
                                         ("{{{FC10-SN}*100}*100}*100", "MAX_LAYERS"),
                                         ("{" * 200 + "FC10-SN" + "}*1" * 200, "MAX_NESTING")],
                         ids=["repeat", "layers", "nesting"])
def test_a_spec_that_would_eat_memory_or_the_stack_is_one_line_naming_the_limit(tmp_path, spec, limit):
    """Issue 28: these grew to gigabytes until killed, or hit Python's recursion limit; now refused before any layer
    is built (the time is the digits' split and Hydra's start)."""
    start = time.perf_counter()
    proc = run_snnexp("train", "model=convnet", f'model.spec="{spec}"', "hydra.run.dir=run", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("snnexp: error:")]
    assert line.startswith("snnexp: error: model.spec ") and f"(snnexp.nn.models.spec.{limit})" in line
    assert time.perf_counter() - start < 30
