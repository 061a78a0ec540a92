"""trainer.micro_batch: a batch run in pieces, one optimizer step for all (train/epoch.py, _backward_in_pieces). Where
no layer mixes samples the step is the whole batch's: each piece's mean loss weighted by its share of the batch,
so its gradients sum to the batch's mean-loss gradient."""

import json

import pytest
import torch

from conftest import run_snnexp
from snnexp.train import build, epoch, loop
from test_ddp import NET, torchrun, weights
from test_resume import compose_train


def one_batch_gradients(micro_batch, *overrides):
    """The gradients, scores and loss of the first training batch (64 digits) with trainer.micro_batch."""
    cfg = compose_train(*NET, f"trainer.micro_batch={micro_batch}", *overrides)
    build.seed_everything(0)
    run = build.build_run(cfg, torch.device("cpu"))
    state = loop.new_train_state(run)
    x, y = next(iter(build.make_loader(run.splits.train, cfg, train=True)))
    run.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    scores, loss, failed = epoch._backward_in_pieces(run, state, x, y)
    assert failed is None
    return {n: p.grad.clone() for n, p in run.model.named_parameters()}, scores, loss, (run, x, y)


@pytest.mark.parametrize("micro_batch", [1, 10, 32])  # 10: pieces of 10 and a last one of 4
def test_the_pieces_gradients_sum_to_the_whole_batchs_gradient(micro_batch):
    whole, scores, loss, (run, x, y) = one_batch_gradients("null")
    pieces, piece_scores, piece_loss, _ = one_batch_gradients(micro_batch)
    # against the equation: the batch's mean loss, computed here in one piece, without the engine
    assert loss == pytest.approx(run.loss_fn(epoch.forward(run, x), y).item(), rel=1e-6)
    assert piece_loss == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(piece_scores, scores, atol=1e-5)
    assert whole.keys() == pieces.keys()
    for name in whole:
        # float32 sums in another order; an unweighted piece loss would give gradients (64 / micro_batch) x larger
        assert torch.allclose(pieces[name], whole[name], rtol=1e-4, atol=1e-7), name
        assert whole[name].abs().max() > 1e-6, name  # a gradient that is there to compare


def test_training_in_pieces_takes_the_whole_batchs_steps_and_resume_may_change_it(tmp_path):
    run_snnexp("train", *NET, "trainer.max_steps=10", "hydra.run.dir=one", cwd=tmp_path)
    run_snnexp("train", *NET, "trainer.max_steps=10", "trainer.micro_batch=24", "hydra.run.dir=pieces", cwd=tmp_path)
    one, pieces = weights(tmp_path / "one"), weights(tmp_path / "pieces")
    for name in one:
        assert torch.allclose(one[name], pieces[name], rtol=0, atol=1e-6), name
    assert json.loads((tmp_path / "pieces" / "metrics.json").read_text())["step"] == 10
    # the same step in other pieces: a resume may change it (checkpoint.MAY_CHANGE)
    run_snnexp("train", "resume=pieces", "trainer.max_steps=12", "trainer.micro_batch=5", cwd=tmp_path)
    assert json.loads((tmp_path / "pieces" / "metrics.json").read_text())["step"] == 12


def test_data_parallel_processes_in_pieces_take_the_one_process_steps(tmp_path):
    run_snnexp("train", *NET, "trainer.max_steps=10", "hydra.run.dir=one", cwd=tmp_path)
    torchrun("train", *NET, "trainer.strategy=ddp", "trainer.micro_batch=8", "trainer.max_steps=10",
             "hydra.run.dir=ddp", cwd=tmp_path)  # 2 processes x 32 samples, each in 4 pieces
    one, ddp = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    for name in one:
        assert torch.allclose(one[name], ddp[name], rtol=0, atol=1e-6), name


def test_a_non_finite_loss_in_a_piece_stops_with_the_diagnosis_or_skips_the_batch(tmp_path):
    args = ("optim.lr=1e36", "trainer.epochs=1", "trainer.micro_batch=16")
    proc = run_snnexp("train", *args, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("snnexp: error: non-finite ")
    run_snnexp("train", *args, "trainer.on_nonfinite=skip", "hydra.run.dir=skip", cwd=tmp_path)
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["skipped_batches"] > 0 and metrics["step"] == 23 - metrics["skipped_batches"]


def test_a_micro_batch_below_1_is_refused(tmp_path):
    proc = run_snnexp("train", "trainer.micro_batch=0", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "trainer.micro_batch" in proc.stderr and "null (the whole batch at once) or an integer >= 1" in proc.stderr

