"""Where the project's data sets are found (no heavy imports: the command line's ``--help`` uses it)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LIPDEN_DATA"


def default_data_root() -> Path:
    """Where the dev sets (train400, set12, bsd68, mri_colin27) are looked for.

    ``$LIPDEN_DATA`` if set; else ``../shared/data`` beside a source checkout; else (an
    installed package) ``../shared/data`` relative to the working directory.
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout.parent / "shared" / "data"
    return (Path.cwd().parent / "shared" / "data").resolve()
