"""Safeguarded Anderson acceleration of a fixed-point iteration ``z <- T(z)`` with T averaged.

Anderson (type II) extrapolates from the last ``memory`` pairs (z_i, T z_i): with the residuals
g_i = T z_i - z_i and their differences dG, dT, it takes the least-squares coefficients
``c = argmin ||g_k - dG c||`` and proposes ``z_A = T z_k - dT c``. The proposal is accepted,
per image, only when it passes the safeguard:

1. ``||g(z_A)|| <= (1 - delta) ||g(z_k)||``: the fixed-point residual decreases (by a fixed
   fraction, ``delta`` = :data:`SAFEGUARD_DECREASE`);
2. the lengths ``||z_A - z_k||`` of all accepted proposals of the image sum to at most
   ``C ||T z_0||`` (C = :data:`SAFEGUARD_BUDGET`; scaled by the iterate, not by the residual: a
   slowly contracting T has its fixed point many residuals away, which is where the
   extrapolation helps);

otherwise the plain step ``z_{k+1} = T z_k`` is taken. When a closed convex set K containing
every fixed point of T is known (the box of a box-constrained solve), the proposal is first
projected onto it: P_K moves no point farther from a fixed point, and an extrapolation of pixels
that the box holds at a bound (an MRI background at 0) otherwise leaves the box and fails
test 1 nearly every time.

Convergence (finite dimension, T averaged with a fixed point p): a plain step does not increase
||z - p|| (T is nonexpansive) nor the residual (||T T z - T z|| <= ||T z - z||); an accepted
step increases ||z - p|| by at most its length, and these lengths are summable (test 2), so
||z_k - p|| converges for every fixed point p (quasi-Fejer) and the iterates are bounded. The
residual never increases; if infinitely many proposals are accepted it shrinks by (1 - delta)
infinitely often (test 1), otherwise the tail is the plain Krasnosel'skii-Mann iteration:
either way it tends to 0. A cluster point is then a fixed point (T is continuous), and since
||z_k - p|| converges for that p too, the whole sequence converges to it. The residual sequence
reported by ``reconstruct`` stays non-increasing. The idea of safeguarding Anderson steps by
residual tests follows Zhang, O'Donoghue & Boyd, "Globally convergent type-I Anderson
acceleration for nonsmooth fixed-point iterations", SIAM J. Optim. 30 (2020); the proof above
uses only tests 1-2, not how the proposal was made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Safeguard constants of the module docstring: the residual decrease an accepted proposal must
#: achieve, and the budget of accepted step lengths in units of ||T z_0|| (loose: the proof only
#: needs them positive and finite; test 1 is what rejects poor proposals in practice).
SAFEGUARD_DECREASE = 1e-3
SAFEGUARD_BUDGET = 10.0
#: After a rejected proposal an image waits 1, 2, 4, ... (at most this many) plain steps before
#: the next one: each rejection costs an evaluation of T, and where the extrapolation fails (near
#: kinks of the denoiser or of the box) it tends to fail repeatedly.
MAX_BACKOFF = 16
#: Tikhonov weight of the least-squares problem, relative to the trace of its Gram matrix.
REGULARIZATION = 1e-10


class AndersonAccelerator:
    """History of one batch of iterates and the safeguarded proposal; tensors are (B, ...).

    ``memory`` (>= 1) is the number of past differences used. ``project``: the projection onto
    a closed convex set containing every fixed point of T, applied to each proposal (None: no
    projection). Images are independent: each has its own coefficients, count of accepted
    steps, step budget and back-off.
    """

    def __init__(self, memory: int, project: Callable[[Tensor], Tensor] | None = None) -> None:
        if not (isinstance(memory, int) and memory >= 1):
            raise ValueError(f"the Anderson memory must be an integer >= 1, got {memory!r}")
        self.memory = memory
        self.project = project
        self._dg: list[Tensor] = []
        self._dt: list[Tensor] = []
        self._last: tuple[Tensor, Tensor] | None = None
        self._first_norm: Tensor | None = None
        self.accepted: Tensor | None = None
        self._travelled: Tensor | None = None
        self._backoff: Tensor | None = None
        self._wait: Tensor | None = None

    def propose(self, z: Tensor, tz: Tensor) -> Tensor | None:
        """Record the pair (z_k, T z_k) and return the proposal z_A (None before two pairs)."""
        g, t = (tz - z).flatten(1), tz.flatten(1)
        if self._first_norm is None:
            self._first_norm = t.norm(dim=1)
            self.accepted = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
            self._travelled = torch.zeros_like(self._first_norm)
            self._backoff = torch.zeros_like(self.accepted)
            self._wait = torch.zeros_like(self.accepted)
        assert self._wait is not None
        self._wait.sub_(1).clamp_(min=0)
        if self._last is not None:
            self._dg.append(g - self._last[0])
            self._dt.append(t - self._last[1])
            del self._dg[: -self.memory], self._dt[: -self.memory]
        self._last = (g, t)
        if not self._dg:
            return None
        dg = torch.stack(self._dg, 1).double()  # (B, m, N)
        gram = dg @ dg.transpose(1, 2)
        ridge = REGULARIZATION * gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-300)
        gram = gram + ridge[:, None, None] * torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
        coefficients = torch.linalg.solve(gram, (dg @ g.double()[:, :, None]))  # (B, m, 1)
        # a degenerate history proposes T z_k itself rather than NaN (the denoiser refuses NaN)
        coefficients = torch.nan_to_num(coefficients, nan=0.0, posinf=0.0, neginf=0.0)
        dt = torch.stack(self._dt, 1)
        proposal = (t - (coefficients.to(dt.dtype).transpose(1, 2) @ dt).squeeze(1)).view_as(z)
        return proposal if self.project is None else self.project(proposal)

    def ready(self) -> Tensor:
        """(B,) bool: the images not waiting after a rejected proposal."""
        assert self._wait is not None, "propose() first"
        return self._wait == 0

    def accept(self, z: Tensor, tz: Tensor, proposal: Tensor, t_proposal: Tensor, which: Tensor) -> Tensor:
        """(B,) bool: the images in ``which`` whose proposal passes the safeguard (tests 1-2)."""
        assert self._first_norm is not None and self._travelled is not None and self.accepted is not None
        assert self._backoff is not None and self._wait is not None
        residual = (tz - z).flatten(1).norm(dim=1)
        proposed_residual = (t_proposal - proposal).flatten(1).norm(dim=1)
        length = (proposal - z).flatten(1).norm(dim=1)
        ok = (
            which
            & torch.isfinite(proposed_residual)
            & (proposed_residual <= (1 - SAFEGUARD_DECREASE) * residual)
            & (self._travelled + length <= SAFEGUARD_BUDGET * self._first_norm)
        )
        self.accepted += ok.long()
        self._travelled += torch.where(ok, length, torch.zeros_like(length))
        rejected = which & ~ok
        self._backoff = torch.where(ok, 0, torch.where(rejected, (2 * self._backoff).clamp(1, MAX_BACKOFF), self._backoff))
        self._wait = torch.where(rejected, self._backoff, self._wait)
        return ok
