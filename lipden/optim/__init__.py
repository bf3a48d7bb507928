"""Provably convergent reconstruction: PnP-FBS, PnP-DRS/ADMM, RED, TV, tuning.

Importing the package registers the three method classes in ``lipden.optim.base.METHODS``.
"""

from lipden.optim import drs, fbs, red  # noqa: F401  (each registers its method class)
