"""What determines a training run: the presets and :class:`TrainConfig` (stored in every checkpoint)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lipden.io import default_data_root
from lipden.models.denoiser import PRESETS, SPLINE_DEFAULTS, DenoiserConfig, is_spline
from lipden.nn.splines import SPLINE_INITS

DEFAULT_DATA = default_data_root()  # $LIPDEN_DATA, else ../shared/data
SPLINE_KERNELS = ("auto", "eager", "compiled", "native")

# Paper (GPU): batch 128, lr 4e-5 / 1e-6 / 1e-5. CPU: a quarter of the batch and ~20x the
# learning rates, which reach good quality within an hour on 2 cores.
TRAINING_PRESETS = {
    "paper": {"batch_size": 128, "lr_conv": 4e-5, "lr_spline": 1e-6, "lr_scaling": 1e-5, "steps": 100_000},
    "cpu": {"batch_size": 32, "lr_conv": 8e-4, "lr_spline": 2e-5, "lr_scaling": 2e-4, "steps": 4_000},
}


#: The step-based recipe of a run: its noise level, network, batch, step schedule, learning rates,
#: regularisation, seed and start (``init_from``, ``spline_init``). A run resumed with other values would silently become another run,
#: so resuming refuses them; the device, kernel, precision, checkpoint and validation intervals
#: and data folders may change, and so may ``max_minutes`` (a time budget that can be raised).
#: ``steps`` may change where asked (``replan_steps``) and exact (:func:`schedule_replans_exactly`).
RECIPE_FIELDS = ("sigma", "activation", "conv", "batch_size", "patch_size", "steps", "lr_conv", "lr_spline",
                 "lr_scaling", "tv2_weight", "lr_decay_at", "lr_decay_factor", "seed", "init_from", "spline_init")


def _same(recorded: Any, given: Any) -> bool:
    if isinstance(recorded, float) and isinstance(given, float):  # one rate reached by two products
        return math.isclose(recorded, given, rel_tol=1e-9, abs_tol=0.0)
    return bool(recorded == given)


#: Recipe settings some records predate, with the value every run had before they were recorded.
PREDATED_RECIPE = {"init_from": None, "spline_init": "absolute_value"}


def spline_start(activation: str, from_weights: bool, spline_init: str | None) -> str | None:
    """What the learned splines of a run start as: its recorded ``spline_init`` (None, for a record
    that predates it: the |x| every run started from then); None for a run without learned splines
    or one started from trained weights (``from_weights``), whose splines are its source's."""
    if not is_spline(activation) or from_weights:
        return None
    return spline_init or PREDATED_RECIPE["spline_init"]


def schedule_replans_exactly(recorded_steps: int, config: TrainConfig, step: int) -> bool:
    """Whether a run planned for ``recorded_steps`` that stands at ``step`` may go on with the step
    budget ``config.steps`` instead, as if it had been planned so from the start.

    The learning rates are constant until step ``lr_decay_at * steps`` and multiplied by
    ``lr_decay_factor`` for every step ``k >= lr_decay_at * steps``, so the steps ``0 .. step - 1``
    taken so far are the same under both budgets exactly when
    ``step - 1 < lr_decay_at * min(recorded_steps, config.steps)``: none was taken at a decayed
    rate under either. (A time-budget decay does not depend on ``steps``; another ``lr_decay_at``
    is a difference of its own.)"""
    return step - 1 < config.lr_decay_at * min(recorded_steps, config.steps or 0)


def recipe_differences(recorded: dict[str, Any], config: TrainConfig, step: int | None = None) -> list[str]:
    """``name=recorded (given value)`` for each recipe setting of a resolved ``config`` that differs
    from the one a run recorded (settings the record predates are compared with the value they had
    then, where known, else not compared). With ``config.replan_steps`` and the run's ``step``, a
    step budget that :func:`schedule_replans_exactly` allows is not a difference; one it refuses
    says why."""
    recorded = {**PREDATED_RECIPE, **recorded}
    differences = []
    for name in RECIPE_FIELDS:
        if name not in recorded or _same(recorded[name], getattr(config, name)):
            continue
        if name == "spline_init" and config.spline_start is None:
            continue  # no spline starts from it: no learned spline, or the splines of trained weights
        difference = f"{name}={recorded[name]!r} (given {getattr(config, name)!r})"
        if name == "steps" and config.replan_steps and step is not None:
            if schedule_replans_exactly(recorded[name], config, step):
                continue
            difference += (f"; the step budget can change only before the learning-rate decay of both "
                           f"budgets, and step {step} is past the decay at {config.lr_decay_at} x "
                           f"{min(recorded[name], config.steps or 0)}")
        differences.append(difference)
    return differences


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoints)."""

    output: str
    sigma: float = 15.0  # on the 0-255 scale
    preset: str = "cpu"
    activation: str = "spline"
    conv: str = "ortho"
    train_dir: str = str(DEFAULT_DATA / "train400")
    val_dir: str | None = str(DEFAULT_DATA / "set12")
    batch_size: int | None = None
    patch_size: int = 40
    steps: int | None = None
    validate_every: int = 250
    checkpoint_minutes: float = 10.0  # the training state is also saved when this much time passed since the last save
    lr_conv: float | None = None
    lr_spline: float | None = None
    lr_scaling: float | None = None
    tv2_weight: float = 1e-6
    lr_scale: float = 1.0  # multiplies the preset's learning rates (not explicitly given ones)
    lr_decay_at: float = 0.75  # fraction of the steps (or of max_minutes) after which all learning rates ...
    lr_decay_factor: float = 0.1  # ... are multiplied by this factor
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None
    stop_at: int | None = None  # stop (validate and save) at this step; the schedule stays that of ``steps``
    replan_steps: bool = False  # a resumed run may take ``steps`` for its recorded budget where exact
    compile_spline: bool = False
    spline_kernel: str = "auto"  # auto, eager, compiled or native (see lipden.nn.splines.set_spline_backend)
    mixed_precision: bool | None = None  # bf16 autocast of the convolutions; None: on a GPU or a CPU with native bf16
    cuda_graph: bool = False  # replay each step as a recorded CUDA graph (one GPU process)
    channels: int | None = None  # override the preset's width
    depth: int | None = None  # override the preset's number of convolutions
    init_from: str | None = None  # a new run starts from these weights (a shipped name or a file; lipden.train.warm_start)
    spline_init: str = "identity"  # what every spline of a run from a random init starts as (the paper's identity)

    def resolved(self) -> TrainConfig:
        """Fill unset values from the preset."""
        if self.preset not in TRAINING_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(TRAINING_PRESETS)}")
        defaults = TRAINING_PRESETS[self.preset]
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be positive, got {self.lr_scale}")
        for k in ("lr_conv", "lr_spline", "lr_scaling"):
            if getattr(self, k) is not None and not getattr(self, k) > 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        values: dict[str, Any] = {
            k: (defaults[k] if getattr(self, k) is None and k in defaults else getattr(self, k))
            for k in (f.name for f in dataclasses.fields(self))
        }
        for k in ("lr_conv", "lr_spline", "lr_scaling"):  # only the preset's rates are scaled
            if getattr(self, k) is None:
                values[k] = defaults[k] * self.lr_scale
        config = TrainConfig(**values)
        if config.spline_kernel not in SPLINE_KERNELS:
            raise ValueError(f"spline_kernel must be one of {', '.join(SPLINE_KERNELS)}, got {config.spline_kernel!r}")
        if config.stop_at is not None and config.stop_at < 1:
            raise ValueError(f"stop_at must be >= 1, got {config.stop_at}")
        if config.spline_init not in SPLINE_INITS:
            raise ValueError(f"spline_init must be one of {', '.join(SPLINE_INITS)}, got {config.spline_init!r}")
        if not 0 < config.sigma < 255:
            raise ValueError(f"sigma is on the 0-255 scale and must be in (0, 255), got {config.sigma}")
        return config

    @property
    def spline_start(self) -> str | None:
        """What this run's learned splines start as (:func:`spline_start`)."""
        return spline_start(self.activation, self.init_from is not None, self.spline_init)

    def model_config(self) -> DenoiserConfig:
        base = PRESETS[self.preset].to_dict()
        base.update(activation=self.activation, conv=self.conv, sigma=self.sigma / 255)
        if self.channels is not None:
            base["channels"] = self.channels
        if self.depth is not None:
            base["depth"] = self.depth
        if self.spline_start not in (None, SPLINE_DEFAULTS["init"]):
            base["activation_kwargs"] = {**base.get("activation_kwargs", {}), "init": self.spline_start}
        return DenoiserConfig.from_dict(base)
