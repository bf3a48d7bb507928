"""Safeguarded Anderson acceleration of a fixed-point iteration ``z <- T(z)`` with T averaged.

Anderson (type II) extrapolates from the last ``memory`` pairs (z_i, T z_i): with the residuals
g_i = T z_i - z_i and their differences dG, dT, it takes the least-squares coefficients
``c = argmin ||g_k - dG c||`` and proposes ``z_A = T z_k - dT c``. The proposal is accepted,
per image, only when it passes the safeguard:

1. ``||g(z_A)|| <= (1 - delta) ||g(z_k)||``: the fixed-point residual decreases (by a fixed
   fraction, ``delta`` = ``AndersonConfig.safeguard_decrease``);
2. the lengths ``||z_A - z_k||`` of all accepted proposals of the image sum to at most
   ``C ||T z_0||`` (C = ``AndersonConfig.budget``; scaled by the iterate, not by the residual: a
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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AndersonConfig:
    """Settings of the safeguarded Anderson acceleration (the module docstring's constants).

    ``memory`` (>= 1): the number of past differences used. ``safeguard_decrease`` (delta of
    test 1): the fraction by which an accepted proposal must lower the residual.
    ``budget`` (C of test 2): the total length of accepted steps, in units of ||T z_0|| (loose:
    the proof only needs delta and C positive and finite; test 1 is what rejects poor proposals
    in practice). ``max_backoff``: after a rejected proposal an image waits 1, 2, 4, ... (at most
    this many) plain steps before the next one: each rejection costs an evaluation of T, and
    where the extrapolation fails (near kinks of the denoiser or of the box) it tends to fail
    repeatedly. ``regularization``: Tikhonov weight of the least-squares problem, relative to
    the trace of its Gram matrix.
    """

    memory: int
    safeguard_decrease: float = 1e-3
    budget: float = 10.0
    max_backoff: int = 16
    regularization: float = 1e-10

    def __post_init__(self) -> None:
        if isinstance(self.memory, bool) or not (isinstance(self.memory, int) and self.memory >= 1):
            raise ValueError(f"the Anderson memory must be an integer >= 1, got {self.memory!r}")
        if not (0 < self.safeguard_decrease < 1 and 0 < self.budget < math.inf and self.max_backoff >= 1
                and self.regularization >= 0):
            raise ValueError(f"need 0 < safeguard_decrease < 1, 0 < budget < inf, max_backoff >= 1 and "
                             f"regularization >= 0, got {self}")


class AndersonAccelerator:
    """History of one batch of iterates and the safeguarded proposal; tensors are (B, ...).

    ``config``: memory and safeguard settings. ``project``: the projection onto a closed convex
    set containing every fixed point of T, applied to each proposal (None: no projection).
    Images are independent: each has its own coefficients, count of accepted steps, step budget
    and back-off. ``accepted`` (B,) counts each image's accepted proposals.
    """

    def __init__(self, config: AndersonConfig, project: Callable[[Tensor], Tensor] | None = None) -> None:
        self.config = config
        self.memory = config.memory
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
        ridge = self.config.regularization * gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-300)
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
            & (proposed_residual <= (1 - self.config.safeguard_decrease) * residual)
            & (self._travelled + length <= self.config.budget * self._first_norm)
        )
        self.accepted += ok.long()
        self._travelled += torch.where(ok, length, torch.zeros_like(length))
        rejected = which & ~ok
        self._backoff = torch.where(ok, 0, torch.where(rejected, (2 * self._backoff).clamp(1, self.config.max_backoff), self._backoff))
        self._wait = torch.where(rejected, self._backoff, self._wait)
        return ok

    def advance(
        self, z: Tensor, t_z: Tensor, running: Tensor, tol: float, apply_step: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """One safeguarded pass from z_k, T z_k: returns z_{k+1} and T z_{k+1} (new tensors).

        ``apply_step(v, which)`` evaluates T on the images ``which`` (B,) bool of v. An image
        whose proposal is accepted moves to it; any other running image takes the plain step
        ``z_{k+1} = T z_k`` (a rejected proposal falls back to it). Images that stop at z_k
        (relative residual <= tol) or stopped before keep the plain ``z_{k+1} = T z_k`` (resp.
        z_k) and get no new evaluation of T.
        """
        relative = (t_z - z).flatten(1).norm(dim=1) / t_z.flatten(1).norm(dim=1).clamp_min(1e-12)
        continuing = running & (relative > tol)
        proposal = self.propose(z, t_z)
        trying = continuing & self.ready()  # not waiting after a rejection
        z_next = torch.where(per_image(running, z), t_z, z)
        accepted = torch.zeros_like(continuing)
        t_proposal = z_next
        if proposal is not None and bool(trying.any()):
            t_proposal = apply_step(proposal, trying)
            accepted = self.accept(z, t_z, proposal, t_proposal, trying)
            z_next = torch.where(per_image(accepted, z), proposal, z_next)
        plain = continuing & ~accepted
        t_plain = apply_step(z_next, plain) if bool(plain.any()) else z_next
        return z_next, torch.where(per_image(accepted, z), t_proposal, t_plain)


def per_image(mask: Tensor, like: Tensor) -> Tensor:
    """A (B,) mask shaped to broadcast over ``like`` (B, ...)."""
    return mask.view(-1, *[1] * (like.dim() - 1))
