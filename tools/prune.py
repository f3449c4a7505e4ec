"""Baseline pruning as a script: `python tools/prune.py --base RUN/stage1/model --method taylor --group 3 --out DIR`.

A thin wrapper over `tdc-agent prune` (same flags).
"""

import sys

from tdc_agent.cli.main import run

if __name__ == "__main__":
    sys.exit(run(["prune", *sys.argv[1:]]))
