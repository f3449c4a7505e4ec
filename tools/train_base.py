"""Stage 1 for clusters: `torchrun --nproc_per_node=N tools/train_base.py --config cfg.yaml [key=value ...]`.

A thin wrapper over `tdc-agent train-base`: DDP uses gloo on CPU and NCCL on CUDA, each rank takes
its share of the global batch, and rank 0 writes checkpoints, metrics and the sample grid.
"""

import sys

from tdc_agent.cli.main import run

if __name__ == "__main__":
    sys.exit(run(["train-base", *sys.argv[1:]]))
