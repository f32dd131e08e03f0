"""``python -m analysis CHECKPOINT --out DIR``: the analysis report of one checkpoint (see --help).

The parser and main live in `analysis.commands` with every other analysis command line.
"""

import sys

from analysis.commands import report_main

if __name__ == "__main__":
    sys.exit(report_main())
