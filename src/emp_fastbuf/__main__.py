"""``python -m emp_fastbuf``: the ``fastbuf`` command."""

import sys

from emp_fastbuf.cli import main

if __name__ == "__main__":
    sys.exit(main())
