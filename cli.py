#!/usr/bin/env python
"""Entry point from a source checkout: ``python cli.py --help``."""

import sys

from lipden.cli import main

if __name__ == "__main__":
    sys.exit(main())
