"""``python -m lipden COMMAND``: the command line (:func:`lipden.cli.main`)."""

import sys

from lipden.cli import main

if __name__ == "__main__":
    sys.exit(main())
