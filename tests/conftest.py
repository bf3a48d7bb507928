import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def full_operator(f, input_shape, dtype=torch.float64):
    """Dense matrix of an affine map, from its impulse responses (bias removed)."""
    n = 1
    for s in input_shape:
        n *= s
    with torch.no_grad():
        eye = torch.eye(n, dtype=dtype).view(n, *input_shape)
        offset = f(torch.zeros(1, *input_shape, dtype=dtype))
        columns = f(eye) - offset
    return columns.reshape(n, -1).T
