"""``python -m analysis CHECKPOINT --out DIR``: the analysis report of one checkpoint (see --help).

The parser and main live in `analysis.commands` with every other analysis command line.
"""

import sys

from analysis.commands import report_main
from errors import run_cli

if __name__ == "__main__":  # a bad file or a full disk: one line, `error: <file>: <what is wrong>`, status 2
    sys.exit(run_cli(report_main, status=2))
