"""Base class for layers whose weight is a constrained function of raw parameters."""

from __future__ import annotations

from typing import Generic, TypeVar

import torch
from torch import nn

from lipden.nn.precision import autocast_disabled

#: what a layer computes from its raw parameters: a kernel tensor, or a spline's lookup tables
WeightT = TypeVar("WeightT")


class ConstrainedLayer(nn.Module, Generic[WeightT]):
    """A layer computing its weight from raw parameters in every training forward pass.

    In eval mode (or when no gradient can reach the parameters) the constrained weight is
    computed once and cached; the cache is invalidated whenever a parameter or buffer of
    the layer changes (in-place update, ``load_state_dict``, ``.to()``), so inference costs
    what the equivalent plain layer costs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._weight_cache: tuple[tuple, WeightT] | None = None
        # set by a model that computed several layers' training weights in one pass
        self.shared_weight: WeightT | None = None

    def training_weight(self) -> WeightT:
        """The constrained weight, differentiable in the raw parameters."""
        raise NotImplementedError

    def inference_weight(self) -> WeightT:
        """The constrained weight used in eval mode (default: the training one)."""
        return self.training_weight()

    def _state_key(self) -> tuple:
        tensors = list(self.parameters(recurse=False)) + list(self.buffers(recurse=False))
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)

    def _needs_weight_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters(recurse=False))

    def constrained_weight(self) -> WeightT:
        """The constrained weight to use now (cached in eval mode).

        Always computed in the parameters' precision, with autocast disabled: mixed
        precision may run the convolution in bf16, never the orthogonalisation.
        """
        device_type = next(self.parameters(recurse=False)).device.type
        with autocast_disabled(device_type):
            if self.training:
                self._weight_cache = None
                return self.shared_weight if self.shared_weight is not None else self.training_weight()
            if self._needs_weight_grad():
                return self.inference_weight()
            key = self._state_key()
            if self._weight_cache is None or self._weight_cache[0] != key:
                with torch.no_grad():  # no autograd history: nothing to detach
                    self._weight_cache = (key, self.inference_weight())
            return self._weight_cache[1]

    def train(self, mode: bool = True):
        self._weight_cache = None
        return super().train(mode)
