"""Neuron dynamics against sequences computed by hand from docs/science.md, section 1.

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau      decay_input = True
    H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]        decay_input = False
    H[t] = V[t-1] + X[t]                                   IF
    S[t] = H(H[t] - V_th)        (H(0) = 1)
    V[t] = H[t] (1 - S[t]) + V_reset S[t]                  hard reset
    V[t] = H[t] - V_th S[t]                                soft reset (V_reset = None)

All inputs below are binary fractions, so the hand arithmetic is exact in floating point.
"""

import math

import pytest
import torch

from snnexp.nn.neurons import IF, LIF, PLIF, if_multistep, lif_multistep
from snnexp.nn.surrogate import ATan, Rect

F64 = torch.float64


def seq(*values):
    """A [T, 1] float64 sequence for one neuron."""
    return torch.tensor(values, dtype=F64).unsqueeze(1)


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)


# ---------------------------------------------------------------- LIF, hard reset, decay_input = True


# tau = 2, V_th = 1, V_reset = 0, V[0] = 0;  H = V + (X - V) / 2
# t1: X=1.5  H = 0     + (1.5 - 0    )/2 = 0.75   S=0  V=0.75
# t2: X=1.5  H = 0.75  + (1.5 - 0.75 )/2 = 1.125  S=1  V=0
# t3: X=0.5  H = 0     + (0.5 - 0    )/2 = 0.25   S=0  V=0.25
# t4: X=2.5  H = 0.25  + (2.5 - 0.25 )/2 = 1.375  S=1  V=0
# t5: X=1.75 H = 0     + (1.75 - 0   )/2 = 0.875  S=0  V=0.875
LIF_HARD_X = (1.5, 1.5, 0.5, 2.5, 1.75)
LIF_HARD_S = (0.0, 1.0, 0.0, 1.0, 0.0)
LIF_HARD_V = (0.75, 0.0, 0.25, 0.0, 0.875)


def test_lif_hard_reset_hand_sequence():
    s, v = lif_multistep(seq(*LIF_HARD_X), 0.5, Rect(), v_threshold=1.0, v_reset=0.0, return_v=True)
    close(s, seq(*LIF_HARD_S))
    close(v, seq(*LIF_HARD_V))
    # the module gives the same spikes
    close(LIF(tau=2.0)(seq(*LIF_HARD_X)), seq(*LIF_HARD_S))


def test_lif_fires_when_h_equals_threshold():
    # tau = 2: t1 X=2: H = 0 + (2 - 0)/2 = 1.0 = V_th -> S = H(0) = 1, V = 0
    #          t2 X=1: H = 0 + 1/2 = 0.5 -> S = 0, V = 0.5
    s, v = lif_multistep(seq(2.0, 1.0), 0.5, Rect(), return_v=True)
    close(s, seq(1.0, 0.0))
    close(v, seq(0.0, 0.5))


# ---------------------------------------------------------------- LIF, soft reset (v_reset = None)

# tau = 2, V_th = 1, soft reset, V[0] = 0 (leak towards 0); same inputs as the hard-reset case
# t1: X=1.5  H = 0      + (1.5  - 0     )/2 = 0.75      S=0  V=0.75
# t2: X=1.5  H = 0.75   + (1.5  - 0.75  )/2 = 1.125     S=1  V=1.125-1 = 0.125
# t3: X=0.5  H = 0.125  + (0.5  - 0.125 )/2 = 0.3125    S=0  V=0.3125
# t4: X=2.5  H = 0.3125 + (2.5  - 0.3125)/2 = 1.40625   S=1  V=0.40625
# t5: X=1.75 H = 0.40625+ (1.75 - 0.40625)/2 = 1.078125 S=1  V=0.078125   (the hard reset gave S=0 here)
LIF_SOFT_S = (0.0, 1.0, 0.0, 1.0, 1.0)
LIF_SOFT_V = (0.75, 0.125, 0.3125, 0.40625, 0.078125)


def test_lif_soft_reset_hand_sequence():
    s, v = lif_multistep(seq(*LIF_HARD_X), 0.5, Rect(), v_threshold=1.0, v_reset=None, return_v=True)
    close(s, seq(*LIF_SOFT_S))
    close(v, seq(*LIF_SOFT_V))
    close(LIF(tau=2.0, v_reset=None)(seq(*LIF_HARD_X)), seq(*LIF_SOFT_S))


def test_lif_soft_reset_keeps_overshoot_with_other_threshold():
    # tau = 4, V_th = 0.5, soft reset;  H = V + (X - V)/4
    # t1: X=3    H = 0    + 3/4          = 0.75  S=1  V=0.75-0.5 = 0.25
    # t2: X=1    H = 0.25 + (1-0.25)/4   = 0.4375 S=0 V=0.4375
    # t3: X=1.25 H = 0.4375 + (1.25-0.4375)/4 = 0.4375+0.203125 = 0.640625 S=1 V=0.140625
    s, v = lif_multistep(seq(3.0, 1.0, 1.25), 0.25, Rect(), v_threshold=0.5, v_reset=None, return_v=True)
    close(s, seq(1.0, 0.0, 1.0))
    close(v, seq(0.25, 0.4375, 0.140625))


# ---------------------------------------------------------------- decay_input = False


def test_lif_decay_input_false_hand_sequence():
    # tau = 2, V_th = 1, V_reset = 0;  H = V - (V - 0)/2 + X = V/2 + X
    # t1: X=0.625 H = 0        + 0.625 = 0.625    S=0 V=0.625
    # t2: X=0.625 H = 0.3125   + 0.625 = 0.9375   S=0 V=0.9375
    # t3: X=0.625 H = 0.46875  + 0.625 = 1.09375  S=1 V=0
    # t4: X=0.625 H = 0        + 0.625 = 0.625    S=0 V=0.625
    x = seq(0.625, 0.625, 0.625, 0.625)
    s, v = lif_multistep(x, 0.5, Rect(), decay_input=False, return_v=True)
    close(s, seq(0.0, 0.0, 1.0, 0.0))
    close(v, seq(0.625, 0.9375, 0.0, 0.625))
    close(LIF(tau=2.0, decay_input=False)(x), seq(0.0, 0.0, 1.0, 0.0))


def test_lif_decay_input_true_on_same_input_does_not_fire():
    # tau = 2, decay_input = True;  H = V + (X - V)/2
    # t1: H = 0        + (0.625 - 0       )/2 = 0.3125
    # t2: H = 0.3125   + (0.625 - 0.3125  )/2 = 0.46875
    # t3: H = 0.46875  + (0.625 - 0.46875 )/2 = 0.546875
    # t4: H = 0.546875 + (0.625 - 0.546875)/2 = 0.5859375   (never reaches 1)
    x = seq(0.625, 0.625, 0.625, 0.625)
    s, v = lif_multistep(x, 0.5, Rect(), decay_input=True, return_v=True)
    close(s, seq(0.0, 0.0, 0.0, 0.0))
    close(v, seq(0.3125, 0.46875, 0.546875, 0.5859375))


# ---------------------------------------------------------------- nonzero V_reset


def test_lif_nonzero_v_reset_decay_input_true():
    # tau = 2, V_th = 1, V_reset = -0.5, V[0] = V_reset = -0.5;  H = V + (X - (V + 0.5))/2
    # t1: X=2.25 H = -0.5  + (2.25 - 0    )/2 = 0.625   S=0 V=0.625
    # t2: X=2.25 H = 0.625 + (2.25 - 1.125)/2 = 1.1875  S=1 V=-0.5
    # t3: X=0    H = -0.5  + (0    - 0    )/2 = -0.5    S=0 V=-0.5   (rests at V_reset, not 0)
    # t4: X=2.25 H = 0.625                               S=0 V=0.625
    x = seq(2.25, 2.25, 0.0, 2.25)
    s, v = lif_multistep(x, 0.5, Rect(), v_threshold=1.0, v_reset=-0.5, return_v=True)
    close(s, seq(0.0, 1.0, 0.0, 0.0))
    close(v, seq(0.625, -0.5, -0.5, 0.625))
    close(LIF(tau=2.0, v_reset=-0.5)(x), seq(0.0, 1.0, 0.0, 0.0))


def test_lif_nonzero_v_reset_decay_input_false():
    # tau = 4, V_th = 1, V_reset = 0.25, V[0] = 0.25;  H = V - (V - 0.25)/4 + X
    # t1: X=0.5  H = 0.25 - 0/4          + 0.5 = 0.75                S=0 V=0.75
    # t2: X=0.5  H = 0.75 - (0.5)/4      + 0.5 = 0.75-0.125+0.5=1.125 S=1 V=0.25
    # t3: X=0    H = 0.25 - 0            + 0   = 0.25                S=0 V=0.25
    s, v = lif_multistep(seq(0.5, 0.5, 0.0), 0.25, Rect(), v_reset=0.25, decay_input=False, return_v=True)
    close(s, seq(0.0, 1.0, 0.0))
    close(v, seq(0.75, 0.25, 0.25))


# ---------------------------------------------------------------- IF


def test_if_hard_reset_hand_sequence():
    # V_th = 1, V_reset = 0;  H = V + X (no leak)
    # t1: X=0.5   H = 0.5           S=0 V=0.5
    # t2: X=0.25  H = 0.75          S=0 V=0.75
    # t3: X=0.5   H = 1.25          S=1 V=0
    # t4: X=0.75  H = 0.75          S=0 V=0.75
    # t5: X=0.375 H = 1.125         S=1 V=0
    x = seq(0.5, 0.25, 0.5, 0.75, 0.375)
    s, v = if_multistep(x, Rect(), return_v=True)
    close(s, seq(0.0, 0.0, 1.0, 0.0, 1.0))
    close(v, seq(0.5, 0.75, 0.0, 0.75, 0.0))
    close(IF()(x), seq(0.0, 0.0, 1.0, 0.0, 1.0))


def test_if_soft_reset_and_nonzero_reset():
    # soft: V_th = 1;  H = V + X, V = H - S
    # t1: X=0.5   H=0.5   S=0 V=0.5
    # t2: X=0.25  H=0.75  S=0 V=0.75
    # t3: X=0.5   H=1.25  S=1 V=0.25
    # t4: X=0.625 H=0.875 S=0 V=0.875
    # t5: X=0.375 H=1.25  S=1 V=0.25
    x = seq(0.5, 0.25, 0.5, 0.625, 0.375)
    s, v = if_multistep(x, Rect(), v_reset=None, return_v=True)
    close(s, seq(0.0, 0.0, 1.0, 0.0, 1.0))
    close(v, seq(0.5, 0.75, 0.25, 0.875, 0.25))
    # V_reset = 0.5, V_th = 1, V[0] = 0.5;  H = V + X
    # t1: X=0.25 H=0.75 S=0 V=0.75;  t2: X=0.25 H=1.0 S=1 V=0.5;  t3: X=0.25 H=0.75 S=0 V=0.75
    s, v = if_multistep(seq(0.25, 0.25, 0.25), Rect(), v_reset=0.5, return_v=True)
    close(s, seq(0.0, 1.0, 0.0))
    close(v, seq(0.75, 0.5, 0.75))
    close(IF(v_reset=0.5)(seq(0.25, 0.25, 0.25)), seq(0.0, 1.0, 0.0))


# ---------------------------------------------------------------- multi-dimensional input


def test_multidim_input_each_neuron_independent():
    # [T=5, B=2, C=2]: four LIF neurons (tau=2, V_th=1, hard reset to 0), each with its own input:
    # the LIF_HARD sequence above, zeros, a constant 0.625 and the pattern 2,1,2,1,2.
    # zeros: H stays 0 -> no spikes, V = 0
    # 0.625 constant (decay_input=True): V = 0.3125, 0.46875, 0.546875, 0.5859375, 0.60546875 (H + (0.625-H)/2)
    # 2,1,2,1,2: t1 H=1 S=1 V=0; t2 H=0.5 V=0.5; t3 H=0.5+(2-0.5)/2=1.25 S=1 V=0; t4 H=0.5; t5 H=1.25 S=1
    cols = [
        (LIF_HARD_X, LIF_HARD_S, LIF_HARD_V),
        ((0.0,) * 5, (0.0,) * 5, (0.0,) * 5),
        ((0.625,) * 5, (0.0,) * 5, (0.3125, 0.46875, 0.546875, 0.5859375, 0.60546875)),
        ((2.0, 1.0, 2.0, 1.0, 2.0), (1.0, 0.0, 1.0, 0.0, 1.0), (0.0, 0.5, 0.0, 0.5, 0.0)),
    ]
    x = torch.tensor([c[0] for c in cols], dtype=F64).T.reshape(5, 2, 2)
    s_exp = torch.tensor([c[1] for c in cols], dtype=F64).T.reshape(5, 2, 2)
    v_exp = torch.tensor([c[2] for c in cols], dtype=F64).T.reshape(5, 2, 2)
    s, v = lif_multistep(x, 0.5, Rect(), return_v=True)
    assert s.shape == (5, 2, 2) and v.shape == (5, 2, 2)
    close(s, s_exp)
    close(v, v_exp)
    close(LIF(tau=2.0)(x), s_exp)


def _reference_lif(xs, tau, v_th, v_reset, decay_input):
    """Scalar pure-Python transcription of the section-1 equations (tau=None: IF)."""
    rest = 0.0 if v_reset is None else v_reset
    v, out_s, out_v = rest, [], []
    for x in xs:
        if tau is None:
            h = v + x
        elif decay_input:
            h = v + (x - (v - rest)) / tau
        else:
            h = v - (v - rest) / tau + x
        s = 1.0 if h >= v_th else 0.0
        v = h - v_th * s if v_reset is None else h * (1 - s) + v_reset * s
        out_s.append(s)
        out_v.append(v)
    return out_s, out_v


@pytest.mark.parametrize(
    "tau, v_th, v_reset, decay_input",
    [(2.0, 1.0, 0.0, True), (3.0, 0.5, None, True), (1.5, 1.0, -0.2, False), (None, 1.0, 0.0, True)],
)
def test_5d_input_matches_scalar_reference(tau, v_th, v_reset, decay_input):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 2, 3, 2, 2), generator=g, dtype=F64) * 1.5
    if tau is None:
        s, v = if_multistep(x, ATan(), v_th, v_reset, return_v=True)
    else:
        s, v = lif_multistep(x, 1.0 / tau, ATan(), v_th, v_reset, decay_input, return_v=True)
    assert s.shape == x.shape and v.shape == x.shape
    flat_x = x.reshape(6, -1)
    s_exp = torch.empty_like(flat_x)
    v_exp = torch.empty_like(flat_x)
    for j in range(flat_x.shape[1]):
        ss, vv = _reference_lif(flat_x[:, j].tolist(), tau, v_th, v_reset, decay_input)
        s_exp[:, j] = torch.tensor(ss, dtype=F64)
        v_exp[:, j] = torch.tensor(vv, dtype=F64)
    assert s_exp.sum() > 0  # the case exercises spikes
    close(s.reshape(6, -1), s_exp)
    close(v.reshape(6, -1), v_exp)


# ---------------------------------------------------------------- every call starts from rest


@pytest.mark.parametrize(
    "make", [lambda: LIF(tau=2.0), lambda: LIF(tau=2.0, v_reset=None), lambda: IF(), lambda: PLIF(tau0=2.0)]
)
def test_each_call_starts_from_rest(make):
    neuron = make()
    g = torch.Generator().manual_seed(1)
    a = torch.rand((4, 3, 5), generator=g) * 2
    b = torch.rand((4, 3, 5), generator=g) * 2
    first = neuron(b)
    neuron(a)  # would leave a charged membrane if state were carried
    again = neuron(b)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, make()(b))  # a fresh module agrees
    assert first.sum() > 0


# ---------------------------------------------------------------- detach_reset and the gradient


def _two_step_grad(detach_reset, v_reset):
    # LIF tau = 2, V_th = 1, Rect(width 0.5): dS/dH = 2 where |H - 1| < 0.25, else 0
    x = torch.tensor([[2.4], [2.2]], dtype=F64, requires_grad=True)
    s = LIF(tau=2.0, v_reset=v_reset, detach_reset=detach_reset, surrogate=Rect(width=0.5))(x)
    s.sum().backward()
    return s.detach(), x.grad


def test_detach_reset_gradient_hard_reset_hand_derived():
    # Forward: H1 = 2.4/2 = 1.2  S1 = 1  V1 = 0;   H2 = 0 + (2.2 - 0)/2 = 1.1  S2 = 1
    # g1 = g2 = 2 (|0.2| < 0.25, |0.1| < 0.25).  L = S1 + S2.
    # dS1/dx1 = g1 * dH1/dx1 = 2 * 0.5 = 1;   dS2/dx2 = g2 * 0.5 = 1;   dH2/dV1 = 1 - 1/2 = 0.5
    # detach_reset=True : V1 = H1 (1 - sg(S1)) -> dV1/dH1 = 1 - S1 = 0   -> dL/dx1 = 1 + 0 = 1
    # detach_reset=False: dV1/dH1 = (1 - S1) - H1 g1 = 0 - 1.2*2 = -2.4 -> dV1/dx1 = -1.2
    #                     dS2/dx1 = g2 * 0.5 * (-1.2) = -1.2            -> dL/dx1 = 1 - 1.2 = -0.2
    s_det, g_det = _two_step_grad(True, 0.0)
    s_att, g_att = _two_step_grad(False, 0.0)
    close(s_det, seq(1.0, 1.0))
    close(s_att, seq(1.0, 1.0))
    close(g_det, seq(1.0, 1.0))
    close(g_att, seq(-0.2, 1.0))
    assert not torch.allclose(g_det, g_att)


def test_detach_reset_gradient_soft_reset_hand_derived():
    # Soft reset: V1 = H1 - S1 = 0.2;  H2 = 0.2 + (2.2 - 0.2)/2 = 1.2  S2 = 1 (|0.2| < 0.25, g2 = 2)
    # detach:   dV1/dH1 = 1             -> dS2/dx1 = 2 * 0.5 * 1 * 0.5    = 0.5  -> dL/dx1 = 1 + 0.5 = 1.5
    # attached: dV1/dH1 = 1 - g1 = -1   -> dS2/dx1 = 2 * 0.5 * (-1) * 0.5 = -0.5 -> dL/dx1 = 0.5
    s_det, g_det = _two_step_grad(True, None)
    _, g_att = _two_step_grad(False, None)
    close(s_det, seq(1.0, 1.0))
    close(g_det, seq(1.5, 1.0))
    close(g_att, seq(0.5, 1.0))


# ---------------------------------------------------------------- PLIF


def test_plif_initial_w_and_tau():
    p2, p3 = PLIF(tau0=2.0), PLIF(tau0=3.0)
    # w = -ln(tau0 - 1): tau0 = 2 -> -ln 1 = 0;  tau0 = 3 -> -ln 2
    assert p2.w.item() == 0.0
    assert p3.w.item() == pytest.approx(-math.log(2.0), abs=1e-7)
    # one learnable scalar per layer
    assert isinstance(p2.w, torch.nn.Parameter) and p2.w.numel() == 1 and p2.w.requires_grad
    assert [n for n, _ in p2.named_parameters()] == ["w"]
    # tau = 1/sigmoid(w): sigmoid(0) = 1/2 -> 2;  sigmoid(-ln 2) = 1/(1 + 2) = 1/3 -> 3
    assert p2.tau == pytest.approx(2.0)
    assert p3.tau == pytest.approx(3.0, rel=1e-6)
    with torch.no_grad():
        p2.w.fill_(math.log(3.0))  # sigmoid(ln 3) = 3/4 -> tau = 4/3
    assert p2.tau == pytest.approx(4.0 / 3.0, rel=1e-6)


@pytest.mark.parametrize("tau0, decay_input, v_reset", [(2.0, True, 0.0), (3.0, True, None), (5.0, False, 0.0)])
def test_plif_equals_lif_with_same_tau(tau0, decay_input, v_reset):
    g = torch.Generator().manual_seed(2)
    x = torch.rand((8, 4, 6), generator=g, dtype=F64) * 2.5
    plif = PLIF(tau0=tau0, decay_input=decay_input, v_reset=v_reset).double()
    lif = LIF(tau=tau0, decay_input=decay_input, v_reset=v_reset)
    out = plif(x)
    assert out.sum() > 0
    torch.testing.assert_close(out, lif(x))


def _plif_w_grad(detach_reset):
    # tau0 = 2 -> w = 0, k = sigmoid(w) = 1/2, dk/dw = k (1 - k) = 1/4.  Rect(width 1): dS/dH = 1 if |H-1| < 0.5
    plif = PLIF(tau0=2.0, detach_reset=detach_reset, surrogate=Rect(width=1.0)).double()
    s = plif(seq(1.25, 1.25))
    s.sum().backward()
    return s.detach(), plif.w.grad.item()


def test_plif_w_gradient_hand_derived_detached():
    # H1 = V0 + (X1 - V0) k = 1.25 k = 0.625 (S1 = 0, g1 = 1 as |0.625 - 1| < 0.5);   V1 = H1
    # H2 = V1 + (X2 - V1) k = 0.625 + 0.625/2 = 0.9375 (S2 = 0, g2 = 1 as |-0.0625| < 0.5)
    # dH1/dk = X1 - V0 = 1.25
    # dH2/dk = (1 - k) dV1/dk + (X2 - V1) = 0.5 * 1.25 + (1.25 - 0.625) = 1.25   (dV1/dH1 = 1 - S1 = 1)
    # dL/dk = g1 * 1.25 + g2 * 1.25 = 2.5;   dL/dw = 2.5 * 1/4 = 0.625
    s, gw = _plif_w_grad(detach_reset=True)
    close(s, seq(0.0, 0.0))
    assert gw == pytest.approx(0.625, abs=1e-12)


def test_plif_w_gradient_hand_derived_attached_reset():
    # Without detach_reset the reset term carries gradient even with no spike:
    # dV1/dH1 = (1 - S1) - H1 g1 = 1 - 0.625 = 0.375   -> dV1/dk = 0.375 * 1.25 = 0.46875
    # dH2/dk = 0.5 * 0.46875 + (1.25 - 0.625) = 0.234375 + 0.625 = 0.859375
    # dL/dk = 1.25 + 0.859375 = 2.109375;   dL/dw = 2.109375 / 4 = 0.52734375
    _, gw = _plif_w_grad(detach_reset=False)
    assert gw == pytest.approx(0.52734375, abs=1e-12)


def test_plif_w_gradient_matches_finite_difference_with_smooth_spike():
    # With a smooth stand-in for the spike (sigmoid instead of Heaviside + surrogate) the whole
    # PLIF computation is differentiable, so autograd on w must equal a central finite difference.
    g = torch.Generator().manual_seed(3)
    x = torch.rand((6, 3, 4), generator=g, dtype=F64) * 3
    weights = torch.rand((6, 3, 4), generator=g, dtype=F64)
    for tau0, v_reset in [(2.0, 0.0), (3.0, None), (1.5, -0.25)]:
        plif = PLIF(tau0=tau0, v_reset=v_reset, surrogate=lambda u: torch.sigmoid(4 * u)).double()
        loss = (plif(x) * weights).sum()
        loss.backward()
        analytic = plif.w.grad.item()
        eps, w0 = 1e-6, plif.w.item()
        with torch.no_grad():
            plif.w.fill_(w0 + eps)
            up = (plif(x) * weights).sum().item()
            plif.w.fill_(w0 - eps)
            down = (plif(x) * weights).sum().item()
        assert abs(analytic) > 1e-3
        assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-8)
