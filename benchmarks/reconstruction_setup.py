"""The deblur / MRI benchmark's setups (problems, image ranges), rows (a method with a prior
family) and how each row gets its parameters (stored, else tuned on the tuning images)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from lipden.models.pretrained import list_denoisers
from lipden.optim.tuning import defaults_key


class Setup(TypedDict):
    """Problems and (dataset, start, stop) image ranges of a benchmark, full and quick."""

    problems: list[str]
    quick_problems: list[str]
    test: tuple[str, int, int]
    quick_test: tuple[str, int, int]
    tune: tuple[str, int, int]
    quick_tune: tuple[str, int, int]


SETUPS: dict[str, Setup] = {
    "mri": {
        "problems": ["mri-random-x4-cf0.08-noise0.002", "mri-random-x8-cf0.04-noise0.002",
                     "mri-equispaced-x4-cf0.08-noise0.002", "mri-equispaced-x8-cf0.04-noise0.002"],
        "quick_problems": ["mri-random-x4-cf0.08-noise0.002"],
        "test": ("mri_colin27", 8, 40), "quick_test": ("mri_colin27", 8, 9),
        "tune": ("mri_colin27", 0, 8), "quick_tune": ("mri_colin27", 0, 2),
    },
    "deblur": {
        "problems": ["deblur-gaussian1.6-noise0.01", "deblur-motion31-seed1-noise0.01",
                     "deblur-uniform9-noise0.01", "deblur-motion31-seed2-noise0.01",
                     "deblur-gaussian1.6-noise0.03", "deblur-motion31-seed1-noise0.03",
                     "deblur-uniform9-noise0.03", "deblur-motion31-seed2-noise0.03"],
        "quick_problems": ["deblur-gaussian1.6-noise0.01"],
        "test": ("bsd68", 0, 10), "quick_test": ("bsd68", 0, 1),
        "tune": ("set12", 0, 12), "quick_tune": ("set12", 0, 2),
    },
}


@dataclass(frozen=True)
class Row:
    """A benchmark row: ``method`` (a solver, ``tv`` or ``baseline``) with a prior ``family``."""

    label: str
    method: str
    family: str | None = None
    guarantee: bool = True
    bounds: tuple[float, float] | None = None  # box constraint lower <= x <= upper (projected)

    def models(self) -> list[str]:
        """Shipped denoisers of this family (``spline`` -> spline-sigma5, spline-sigma15, ...)."""
        if self.family is None:
            return []
        return [name for name in list_denoisers() if name.split("-sigma")[0] == self.family]

    def defaults_key(self) -> str:
        """Key of the stored defaults: the method for the spline prior, ``method:family`` otherwise,
        with ``:box`` appended for a box-constrained row."""
        return defaults_key(self.method, self.family, self.bounds is not None)

    def fixed(self) -> dict:
        """Parameters every trial and solve of this row gets unsearched (the box bounds)."""
        return {} if self.bounds is None else {"lower": self.bounds[0], "upper": self.bounds[1]}


ROWS: dict[str, Row] = {
    "baseline": Row("zero-filled / A^T y", "baseline"),
    "tv": Row("TV (FISTA)", "tv"),
    "fbs-spline": Row("PnP-FBS, spline prior", "pnp-fbs", "spline"),
    "fbs-spline-box": Row("PnP-FBS, spline prior, box [0, 1]", "pnp-fbs", "spline", bounds=(0.0, 1.0)),
    "drs-spline": Row("PnP-DRS, spline prior", "pnp-drs", "spline"),
    "red-spline": Row("RED, spline prior", "red", "spline"),
    "fbs-relu": Row("PnP-FBS, 1-Lipschitz ReLU prior", "pnp-fbs", "relu"),
    "fbs-absolute_value": Row("PnP-FBS, 1-Lipschitz |x| prior", "pnp-fbs", "absolute_value"),
    "fbs-groupsort": Row("PnP-FBS, 1-Lipschitz GroupSort prior", "pnp-fbs", "groupsort"),
    "fbs-householder": Row("PnP-FBS, 1-Lipschitz HouseHolder prior", "pnp-fbs", "householder"),
    "fbs-free": Row("PnP-FBS, unconstrained CNN (NO guarantee)", "pnp-fbs", "free", guarantee=False),
}
QUICK_ROWS = ("baseline", "tv", "fbs-spline", "fbs-relu")


def _iteration_cap(problem, row: Row, max_iter: int, quick: bool) -> int:
    """The common cap, or the larger one stored with the row's tuned entry (a weak prior
    converges slowly); quick runs keep their own small cap."""
    return max_iter if quick else max(max_iter, problem.default_iteration_cap(row.defaults_key()) or 0)


