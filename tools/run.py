"""The whole TDC job for clusters: `torchrun --nproc_per_node=N tools/run.py --config cfg.yaml [--groups 3,4]`.

Stage 1 and each group's fine-tuning run data-parallel over the ranks; rank 0 alone runs the
pruning agent (one LLM conversation, one memory writer), assembles and evaluates. Spread groups
over jobs with --groups, then `tdc-agent assemble --config cfg.yaml` and `tdc-agent evaluate`.
"""

import sys

from tdc_agent.cli.main import run

if __name__ == "__main__":
    sys.exit(run(["run", *sys.argv[1:]]))
