"""Tuned solver setups: what ``problems/tuned_defaults.json`` stores for a problem and a method,
in the form ``lipden.reconstruct`` takes.

An entry is keyed by problem name, then by ``METHOD`` or a variant ``METHOD:VARIANT``
(``pnp-fbs:box``: the same solver with the box constraint [0, 1]; ``pnp-fbs:relu``: another
prior). :func:`tuned_setup` picks, among ``METHOD`` and ``METHOD:box``, the entry with the
higher PSNR on the tuning images (never on test images), so a problem's default solve is
its best tuned setup of that solver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TUNED_DEFAULTS_FILE = Path(__file__).with_name("tuned_defaults.json")

#: Iteration cap of a default solve: at least the test rows' cap (1000; an entry may store a
#: higher one). With Anderson acceleration the tuned test rows stop after at most a few hundred.
DEFAULT_MAX_ITER = 1000
#: Anderson memory of a default solve without a stored setup (same map, same guarantee).
DEFAULT_ACCELERATE = 3
#: The prior of a default solve without a stored setup.
DEFAULT_MODEL = "spline-sigma15"


@dataclass(frozen=True)
class TunedSetup:
    """A solver setup for one problem: ``lipden.reconstruct(y, physics, load_denoiser(setup.model),
    **setup.reconstruct_kwargs())``.

    ``key`` is the entry it was read from (``None``: nothing stored, safe defaults);
    ``parameters`` the solver's parameters (``lower``/``upper`` for a box entry).
    """

    method: str
    model: str = DEFAULT_MODEL
    parameters: dict[str, float] = field(default_factory=dict)
    accelerate: int = DEFAULT_ACCELERATE
    max_iter: int = DEFAULT_MAX_ITER
    key: str | None = None
    tuning_psnr: float | None = None

    @property
    def box(self) -> bool:
        return "lower" in self.parameters or "upper" in self.parameters

    def reconstruct_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``lipden.reconstruct``: method, parameters, accelerate, max_iter."""
        return {"method": self.method, "accelerate": self.accelerate, "max_iter": self.max_iter,
                **self.parameters}


def stored_entries(problem_name: str, path: Path = TUNED_DEFAULTS_FILE) -> dict[str, dict]:
    """Every stored entry of a problem, by key (``{}`` if none or no file)."""
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get(problem_name, {}))


def setup_from_entry(method: str, key: str | None, entry: dict) -> TunedSetup:
    """The setup an entry describes (an empty entry: the safe defaults)."""
    parameters = {k: float(v) for k, v in entry.get("parameters", {}).items() if k != "model"}
    return TunedSetup(
        method=method,
        model=str(entry.get("parameters", {}).get("model", DEFAULT_MODEL)),
        parameters=parameters,
        accelerate=int(entry.get("accelerate", DEFAULT_ACCELERATE if not entry else 0)),
        max_iter=max(DEFAULT_MAX_ITER, int(entry.get("max_iter", 0))),
        key=key,
        tuning_psnr=entry.get("tuning_psnr"),
    )


def tuned_setup(problem_name: str, method: str, box: bool | None = None,
                path: Path = TUNED_DEFAULTS_FILE) -> TunedSetup:
    """The best stored setup of ``method`` for a problem.

    ``box=None`` takes ``METHOD`` or ``METHOD:box``, whichever scored higher on the tuning
    images; ``False`` takes ``METHOD`` (the safe defaults if it is not stored); ``True`` takes
    ``METHOD:box``, else ``METHOD`` (else the safe defaults) with the box [0, 1] added.
    """
    entries = stored_entries(problem_name, path)
    candidates = {key: entries[key] for key in (method, f"{method}:box") if key in entries}
    if box is not None:
        wanted = {k: v for k, v in candidates.items() if k.endswith(":box") == box}
        if not wanted and box and method in candidates:  # the plain setup, constrained to the box
            return _boxed(setup_from_entry(method, method, candidates[method]))
        candidates = wanted
    if not candidates:
        return _boxed(setup_from_entry(method, None, {})) if box else setup_from_entry(method, None, {})
    key = max(candidates, key=lambda k: float(candidates[k].get("tuning_psnr", float("-inf"))))
    return setup_from_entry(method, key, candidates[key])


def _boxed(setup: TunedSetup) -> TunedSetup:
    """``setup`` with the box [0, 1] added. A stored over-relaxation (> 1) is dropped: the
    projection makes the step less averaged, so it may no longer be allowed."""
    parameters = {k: v for k, v in setup.parameters.items() if not (k == "relaxation" and v > 1)}
    return replace(setup, parameters={**parameters, "lower": 0.0, "upper": 1.0})
