"""The trained-token loss: summed next-token negative log-likelihood over trained positions only.

Used by training (finetune.train.trainer), `finetune evaluate` and, later, the preference stage.

`fused` (the default): `fused_nll` walks the trained positions in row chunks. For each chunk it
projects through the head tile by tile over the vocabulary into one fp32 row-block of logits, takes the
log-sum-exp in fp32, reads the target logit, and, when gradients are wanted, turns the same block into
d(nll)/d(logits) in place (softmax minus one-hot, times the soft-cap derivative and the scale) and
multiplies it back through the head for the gradient w.r.t. the hidden states, and w.r.t. the head weight
(and bias) only when the head is trained. Two matrix products (three with a trained head) and one softmax
pass per logit, where a recomputing backward needs three (four) and two. The gradients are kept from the
forward; the function returns the *sum* of the losses, so its backward only multiplies them by the
incoming scalar (per-token scaling of a summed weight gradient would be impossible).
Products run in the head weight's dtype on accelerators (bf16 under bf16 training: fp32 accumulation
inside the GEMM) and in fp32 on CPU (see `_product_dtype`); everything after the product is fp32.

`trl`: TRL's tiled `ChunkedLogProbFunction` (recomputes the logits in backward), kept for comparison
(`loss_head: trl`, scripts/bench_train.py).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import numpy as np

from finetune.data.tokenize import IGNORE_INDEX

VOCAB_TILE = 32768  # vocabulary columns per projection product (both heads)
ROW_CHUNK = 64  # trained positions per block: 64 x 128,256 fp32 logits = 31 MiB (measured, docs/benchmarks.md)
CAST_CACHE_BYTES = 256 * 2**20  # keep an fp32 copy of a bf16 head for the call when it is at most this big


def _product_dtype(weight: Any) -> Any:
    """The head weight's dtype on accelerators (bf16 GEMMs accumulate in fp32 there); fp32 on CPU, whose bf16
    GEMMs are emulated without bf16 instructions (measured 10-20x slower than fp32 here, docs/benchmarks.md)."""
    import torch

    return weight.dtype if weight.device.type != "cpu" else torch.float32


def trained_token_nll(
    hidden: Any, labels: Any, head: Any, text_config: Any, *, loss_head: str = "fused"
) -> tuple[Any, Any]:
    """Summed negative log-likelihood of the trained next-token labels, and their count.

    `hidden` [B, T, H] final (normed) hidden states, `labels` [B, T] unshifted with -100 = not trained,
    `head` the output embedding (`.weight` [V, H], optional `.bias`), `text_config` the model's text config
    (`logit_scale`, `final_logit_softcapping` are honoured when set). Only trained positions are projected.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    count = mask.sum()
    weight, bias = head.weight, getattr(head, "bias", None)
    if not bool(mask.any()):  # zero, with the graph connected to every input (a trained head too: DDP waits for it)
        zero = hidden.sum() * 0.0
        for tensor in (weight, bias):
            if tensor is not None and tensor.requires_grad:
                zero = zero + tensor.sum().to(zero.device) * 0.0
        return zero, count
    selected = hidden[:, :-1][mask].to(weight.device)
    picked = targets[mask].to(weight.device)
    logit_scale = float(getattr(text_config, "logit_scale", None) or 1.0)
    softcap = getattr(text_config, "final_logit_softcapping", None)
    if loss_head == "trl":
        from trl.kernels import ChunkedLogProbFunction

        log_probs = ChunkedLogProbFunction.apply(
            selected, weight, bias, picked, 1.0, VOCAB_TILE, softcap, logit_scale, ("log_probs",)
        )[0]
        return -log_probs.sum(), count
    if loss_head != "fused":
        raise ValueError(f"loss_head must be 'fused' or 'trl', got {loss_head!r}")
    return fused_nll(selected, weight, bias, picked, logit_scale=logit_scale, softcap=softcap)[0], count


def fused_nll(
    hidden: Any, weight: Any, bias: Any, targets: Any, *, logit_scale: float = 1.0, softcap: float | None = None,
    row_chunk: int = ROW_CHUNK, vocab_tile: int = VOCAB_TILE,
) -> tuple[Any, Any]:
    """(summed NLL, per-token NLL [N] fp32, not differentiable) of `targets` [N] under rows `hidden` [N, H]."""
    import torch

    grad_on = torch.is_grad_enabled()
    wants = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    return _autograd_function().apply(
        hidden, weight, bias, targets, float(logit_scale), None if softcap is None else float(softcap),
        wants, int(row_chunk), int(vocab_tile),
    )


@functools.cache
def _autograd_function() -> type:
    """The torch.autograd.Function (built on first use, so importing this module does not import torch)."""
    import torch

    class _Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, logit_scale, softcap, wants, row_chunk, vocab_tile):  # noqa: ANN001
            want_h, want_w, want_b = wants
            dtype = _product_dtype(weight)
            n, vocab = hidden.shape[0], weight.shape[0]
            losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty(n, hidden.shape[1], dtype=torch.float32, device=hidden.device) if want_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
            grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if want_b else None
            any_grad = want_h or want_w or want_b
            block = torch.empty(min(n, row_chunk), vocab, dtype=torch.float32, device=hidden.device)
            slope = torch.empty_like(block) if (any_grad and softcap is not None) else None
            spans = [(s, min(s + vocab_tile, vocab)) for s in range(0, vocab, vocab_tile)]
            keep = weight.dtype == dtype or weight.numel() * 4 <= CAST_CACHE_BYTES
            cast = [weight[s:e].to(dtype) for s, e in spans] if keep else None

            def tile(i: int) -> Any:
                s, e = spans[i]
                return cast[i] if cast is not None else weight[s:e].to(dtype)

            for first in range(0, n, row_chunk):
                last = min(first + row_chunk, n)
                rows = hidden[first:last].to(dtype)
                z = block[: last - first]
                for i, (s, e) in enumerate(spans):
                    z[:, s:e].copy_(rows @ tile(i).t())
                if bias is not None:
                    z.add_(bias.float())
                if logit_scale != 1.0:
                    z.mul_(logit_scale)
                if softcap is not None:
                    z.div_(softcap).tanh_()
                    if slope is not None:  # d(cap * tanh(x / cap)) / dx = 1 - tanh^2, times the scale
                        torch.mul(z, z, out=slope[: last - first]).neg_().add_(1.0).mul_(logit_scale)
                    z.mul_(softcap)
                lse = torch.logsumexp(z, dim=1)
                index = targets[first:last].unsqueeze(1)
                losses[first:last] = lse - z.gather(1, index).squeeze(1)
                if not any_grad:
                    continue
                z.sub_(lse.unsqueeze(1)).exp_()  # softmax
                z.scatter_add_(1, index, torch.full_like(index, -1.0, dtype=torch.float32))  # minus one-hot
                if slope is not None:
                    z.mul_(slope[: last - first])
                elif logit_scale != 1.0:
                    z.mul_(logit_scale)
                if want_b:
                    grad_b.add_(z.sum(0))
                g = z if dtype == torch.float32 else z.to(dtype)
                if want_h:
                    grad_h[first:last] = 0.0
                for i, (s, e) in enumerate(spans):
                    if want_h:
                        grad_h[first:last].add_(g[:, s:e] @ tile(i))
                    if want_w:
                        grad_w[s:e].add_(g[:, s:e].t() @ rows)
            ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
            ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
            ctx.mark_non_differentiable(losses)
            return losses.sum(), losses

        @staticmethod
        def backward(ctx, grad_total, grad_losses):  # noqa: ANN001, ARG004
            saved = iter(ctx.saved_tensors)
            out = [next(saved) if here else None for here in ctx.present]
            grads = [None if g is None else (g * grad_total).to(dt) for g, dt in zip(out, ctx.dtypes)]
            return grads[0], grads[1], grads[2], None, None, None, None, None, None

    return _Fused


# --- preference pairs: the summed log-prob of each reply (DPO's reference, `finetune evaluate`) ---------------


def sequence_log_probs(model: Any, rows: Any, *, pad_id: int, batch_size: int, fresh_adapter: bool,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[pairs, 2] (chosen, rejected) summed reply log-probs of `model` (dropout off, no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    off = model.disable_adapter() if fresh_adapter and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    out = np.zeros((len(rows), 2), dtype=np.float64)
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    try:
        with torch.no_grad(), off:
            for first in range(0, len(rows), batch_size):
                batch = [rows[i] for i in range(first, min(first + batch_size, len(rows)))]
                ids, mask, scored = pair_batch(batch, pad_id)
                hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                               output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
                out[first : first + len(batch)] = reply_log_probs(hidden, ids.to(device), scored.to(device), head,
                                                                  config).reshape(2, -1).T.cpu().numpy()
                if progress is not None:
                    progress(first + len(batch), len(rows))
    finally:
        model.train(was_training)
    return out


def pair_batch(rows: list, pad_id: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, scored) [2B, T] as TRL's preference collator lays them out: all chosen
    sequences (prompt + reply), then all rejected ones, right-padded; `scored` marks the reply tokens."""
    import torch

    sequences, scored = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for row in rows:
            prompt, reply = list(row["prompt_ids"]), list(row[side])
            sequences.append(prompt + reply)
            scored.append([0] * len(prompt) + [1] * len(reply))
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    marks = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (sequence, marked) in enumerate(zip(sequences, scored)):
        ids[i, : len(sequence)] = torch.tensor(sequence)
        mask[i, : len(sequence)] = 1
        marks[i, : len(marked)] = torch.tensor(marked)
    return ids, mask, marks


def reply_log_probs(hidden: Any, ids: Any, scored: Any, head: Any, config: Any) -> Any:
    """Per sequence, the summed log-prob of its scored tokens given what precedes them ([2B] fp32)."""
    import torch

    targets = scored[:, 1:].bool()
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(targets)[targets]
    _, per_token = fused_nll(hidden[:, :-1][targets], head.weight, getattr(head, "bias", None), ids[:, 1:][targets],
                             logit_scale=float(getattr(config, "logit_scale", None) or 1.0),
                             softcap=getattr(config, "final_logit_softcapping", None))
    return -torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add_(0, rows, per_token)
