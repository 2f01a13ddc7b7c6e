"""The fused trained-token loss head equals a plain full-logits fp32 cross-entropy.

Tolerances: the fp32 path differs from the reference only in summation order (tiled products, a
log-sum-exp over a row block), so per-token losses and gradients agree to ~1e-6 on O(1) values; 1e-5 is
used. The bf16 path (bf16 hidden states and head, as under bf16 training) is compared with the fp32
reference on the *same* bf16 values: products run in fp32 on CPU, so the losses stay tight; the returned
gradients are rounded to bf16 (8 mantissa bits, relative error <= 2^-8 = 0.4%), hence rtol 1e-2.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from finetune.model.loss import fused_nll, trained_token_nll


def _reference(h, w, b, t, scale=1.0, cap=None):  # noqa: ANN001, ANN202
    z = h @ w.t()
    if b is not None:
        z = z + b
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return torch.nn.functional.cross_entropy(z, t, reduction="none")


def _leaves(n=150, hid=32, vocab=3000, train_head=False, dtype=torch.float32, bias=False, seed=0):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hid, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hid, generator=g) * 0.5).to(dtype).requires_grad_(train_head)
    b = (torch.randn(vocab, generator=g)).to(dtype).requires_grad_(train_head) if bias else None
    t = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, t


def _copy(x):  # noqa: ANN001, ANN202
    return None if x is None else x.detach().float().clone().requires_grad_(x.requires_grad)


@pytest.mark.parametrize("train_head", [False, True])
@pytest.mark.parametrize("scale,cap", [(1.0, None), (0.5, None), (1.0, 5.0), (2.0, 3.0)])
def test_fused_matches_full_logits_fp32(train_head: bool, scale: float, cap: float | None) -> None:
    h, w, b, t = _leaves(train_head=train_head, bias=train_head)
    total, per = fused_nll(h, w, b, t, logit_scale=scale, softcap=cap, row_chunk=32, vocab_tile=700)
    (total * 0.37).backward()  # a non-unit incoming gradient, as from the accumulation-window normaliser
    h2, w2, b2 = _copy(h), _copy(w), _copy(b)
    ref = _reference(h2, w2, b2, t, scale, cap)
    (ref.sum() * 0.37).backward()
    torch.testing.assert_close(per, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total.detach(), ref.sum().detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-5)
    if train_head:
        torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.grad, b2.grad, rtol=1e-5, atol=1e-5)
    else:
        assert w.grad is None


def test_fused_matches_full_logits_bf16() -> None:
    h, w, b, t = _leaves(train_head=True, dtype=torch.bfloat16)
    total, per = fused_nll(h, w, b, t, row_chunk=64)
    total.backward()
    h2, w2 = _copy(h), _copy(w)
    ref = _reference(h2, w2, None, t)
    ref.sum().backward()
    torch.testing.assert_close(per, ref.detach(), rtol=1e-5, atol=1e-4)
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h.grad.float(), h2.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(w.grad.float(), w2.grad, rtol=1e-2, atol=1e-2)


def test_head_trained_hidden_frozen_and_no_grad_mode() -> None:
    h, w, b, t = _leaves(train_head=True)
    h = h.detach()
    total, _ = fused_nll(h, w, None, t)
    total.backward()
    w2 = _copy(w)
    _reference(h, w2, None, t).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        total, per = fused_nll(*_leaves()[:2], None, t)
    assert not total.requires_grad and per.shape == t.shape


def test_trained_token_nll_fused_equals_trl_and_counts_only_trained() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 12, 16, generator=g, requires_grad=True)
    head = torch.nn.Linear(16, 500, bias=False)
    labels = torch.randint(0, 500, (2, 12), generator=g)
    labels[0, :5] = -100
    labels[1, 8:] = -100
    config = SimpleNamespace(final_logit_softcapping=4.0, logit_scale=0.7)
    results = {}
    for kind in ("fused", "trl"):
        hidden.grad = None
        nll, count = trained_token_nll(hidden, labels, head, config, loss_head=kind)
        nll.backward()
        results[kind] = (nll.detach(), int(count), hidden.grad.clone())
    assert results["fused"][1] == results["trl"][1] == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(results["fused"][0], results["trl"][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results["fused"][2], results["trl"][2], rtol=1e-5, atol=1e-5)
    assert results["fused"][2][:, -1].abs().sum() == 0  # the last position predicts nothing


def test_empty_batch_is_zero_and_backward_works() -> None:
    hidden = torch.randn(1, 6, 8, requires_grad=True)
    head = torch.nn.Linear(8, 50, bias=False)
    labels = torch.full((1, 6), -100)
    nll, count = trained_token_nll(hidden, labels, head, SimpleNamespace())
    nll.backward()
    assert int(count) == 0 and float(nll) == 0.0
    assert hidden.grad is not None and hidden.grad.abs().sum() == 0
    # a trained head gets its (zero) gradient too: DDP without find_unused_parameters waits for every parameter
    assert head.weight.grad is not None and head.weight.grad.abs().sum() == 0


def test_unknown_loss_head_is_an_error() -> None:
    with pytest.raises(ValueError, match="loss_head"):
        trained_token_nll(torch.randn(1, 3, 4), torch.ones(1, 3, dtype=torch.long), torch.nn.Linear(4, 5),
                          SimpleNamespace(), loss_head="nope")
