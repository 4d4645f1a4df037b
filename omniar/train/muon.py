"""Muon: momentum orthogonalized by Newton-Schulz for the hidden weight matrices, AdamW for everything else.

Muon (Jordan et al. 2024, the modded-nanogpt speedrun; Liu et al. 2025, "Muon is scalable for LLM training")
replaces each hidden matrix's update with the nearest semi-orthogonal matrix to its Nesterov momentum, computed
by a few Newton-Schulz iterations: every direction of the update moves at the same rate instead of the few
dominant ones. The update is scaled by 0.2 * sqrt(max(rows, cols)) so that its RMS matches AdamW's (Liu et al.),
so the learning rate, schedule and decoupled weight decay of an AdamW recipe carry over unchanged.

Embeddings, output heads, norms, biases and the other parameters a recipe does not name as hidden matrices keep
AdamW (in the same optimizer, one state dict, so checkpoints and resume work as for AdamW).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# the quintic iteration's coefficients (Jordan et al.): they push every singular value into ~[0.7, 1.2] in 5 steps
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are native on `device`: a GPU that supports bf16, a CPU with AVX512-BF16 or AMX. Elsewhere
    they are emulated: on a 2-core AVX2 CPU (AMD EPYC) the Newton-Schulz iteration of onecat-tiny's step took 20x
    longer in bf16 than in fp32 (BENCHMARKS.md "Muon")."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own probes (private)
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in native)
    return False


def orthogonalize(g: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """An approximately semi-orthogonal matrix U V^T for g = U S V^T (a batch of matrices in the last two dims),
    by Newton-Schulz iterations on the Frobenius-normalised input, computed in `dtype` - by default bf16 where its
    matmuls are native (half the cost; `fast_bf16`), fp32 elsewhere. Singular values come out in about [0.7, 1.2],
    not exactly 1: enough for an update direction, and far cheaper than an SVD. In fp32 a matrix at least twice as
    wide as it is tall (either way round) iterates in its Gram space (`_gram_iterations`): the same polynomial in
    fewer FLOPs (16% fewer at twice as wide, 53% at 1024 x 192)."""
    if dtype is None:
        dtype = torch.bfloat16 if fast_bf16(g.device) else torch.float32
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix is the small one
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    gram_space = dtype in (torch.float32, torch.float64) and x.size(-1) >= 2 * x.size(-2)
    x = (_gram_iterations if gram_space else _iterations)(x, steps)
    return (x.mT if tall else x).to(g.dtype)


def _iterations(x: Tensor, steps: int) -> Tensor:
    """The quintic Newton-Schulz iterations of a wide x (..., m, n), m <= n: x <- (a + b A + c A^2) x, A = x x^T.
    Each step is three batched products, the polynomial's sums fused into them (baddbmm), on a contiguous x: a
    transposed bf16 x made every product and sum take a strided path (16 onecat-tiny matrices of each shape in bf16
    on a Zen 5 CPU: 63 -> 45 ms; BENCHMARKS.md "Muon")."""
    a, b, c = NS_COEFFICIENTS
    shape = x.shape
    x = x.reshape(-1, *shape[-2:]).contiguous()
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.reshape(shape)


def _gram_iterations(x: Tensor, steps: int) -> Tensor:
    """`_iterations` of a wide x (..., m, n), m <= n, carried out on m x m matrices. Each iteration
    multiplies x on the left by a polynomial P of its Gram matrix A = x x^T, so after k of them x_k = Q_k x_0 with
    Q_k = P_{k-1} ... P_0, and x_{k+1} x_{k+1}^T = P_k A_k P_k: the iterations need only A_0 (one m x m x n
    product), four m x m products per iteration, and Q x_0 at the end - 4 m^2 n + (8 steps - 6) m^3 FLOPs against
    steps (4 m^2 n + 2 m^3) for the direct form (m 192, n 1024: 392 against 826 MFLOP). Identical in exact
    arithmetic; Q amplifies x_0's weakest directions (up to ~3.4^steps), so the rounding of bf16 would be amplified
    with them and only fp32 or wider takes this form (fp32, against float64: 5e-7 on Gaussian inputs, as the direct
    form; 2e-5 - 1.5e-4 of entries ~0.1-0.3 where the singular values span 10^4, the direct form 4e-6; bf16 ~1e-2).
    On a 2-core AVX2 CPU it took onecat-tiny's optimizer step from ~1,000 to ~690 ms (BENCHMARKS.md "Muon")."""
    a, b, c = NS_COEFFICIENTS
    gram = x @ x.mT
    eye = torch.eye(gram.size(-1), dtype=gram.dtype, device=gram.device)
    q = None
    for k in range(steps):
        p = a * eye + b * gram + c * gram @ gram
        q = p if q is None else p @ q
        if k < steps - 1:
            gram = p @ gram @ p
    return q @ x


class Muon(torch.optim.Optimizer):
    """Muon for the param groups marked `muon=True`, AdamW for the others.

    Groups: {"params": [...], "muon": True|False, "lr", "weight_decay"}; defaults for the rest
    (`momentum`, `nesterov`, `ns_steps`, `flatten` for Muon groups; `betas`, `eps` for AdamW groups). Muon parameters
    must be matrices (or batches of matrices in the last two dimensions, orthogonalised one by one); with `flatten`
    each parameter is one matrix of its first dimension by the rest - a convolution's filters (out, in, k, k) as
    (out, in k k)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        betas=betas, eps=eps, muon=False, flatten=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"]:
                bad = [tuple(p.shape) for p in group["params"] if p.dim() < 2]
                if bad:
                    raise ValueError(f"Muon needs matrices; got parameters of shape {bad} in a muon group")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                updates = self._muon_updates(params, group)
            else:
                updates = [self._adamw_update(p, group) for p in params]
            for p, update in zip(params, updates):
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss

    def _muon_updates(self, params: list[Tensor], group: dict) -> list[Tensor]:
        """Each matrix's orthogonalised Nesterov momentum, scaled to AdamW's RMS. Matrices of one shape are
        orthogonalised together as one batch, one matmul per iteration for all of them: the expert copies are many
        small matrices of a few shapes (onecat-tiny's optimizer step: 80 -> 52 ms, BENCHMARKS.md)."""
        by_shape: dict[tuple, list[int]] = {}
        moments = []
        for i, p in enumerate(params):
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            moments.append(p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf)
            by_shape.setdefault((tuple(p.shape), p.dtype, p.device), []).append(i)
        updates: list[Tensor | None] = [None] * len(params)
        for (shape, _, _), idx in by_shape.items():
            # (.get: groups saved before `flatten` was one lack it)
            matrix = (shape[0], math.prod(shape[1:])) if group.get("flatten") else shape[-2:]
            flat = torch.stack([moments[i].reshape(-1, *matrix) for i in idx])  # (n, batch, rows, cols)
            ortho = orthogonalize(flat, group["ns_steps"]).mul_(0.2 * math.sqrt(max(matrix)))
            for i, u in zip(idx, ortho.unbind(0)):
                updates[i] = u.reshape(shape)
        return updates

    def _adamw_update(self, p: Tensor, group: dict) -> Tensor:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros(())
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
        return state["exp_avg"] / (1 - beta1 ** t) / denom
