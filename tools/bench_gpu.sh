#!/usr/bin/env bash
# GPU benchmark (~5-8 min on one modern GPU): the ddpm-cifar10 pruning/counting benchmark, then
# stage-1 training throughput and sampling speed of the ddpm-cifar10 UNet on CUDA (bf16 autocast),
# on synthetic 32x32 images (throughput does not depend on the pixels; no download needed).
#   bash tools/bench_gpu.sh            # writes benchmarks/results/gpu/{pruning_*.md, gpu.json, gpu.md}
#   DEVICE=cpu PRESET=tiny STEPS=6 SIZE=8 OUT=/tmp/g bash tools/bench_gpu.sh   # a CPU check of the script
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu}
WORK=$(mktemp -d)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" || true

$PY tools/bench_pruning.py --preset "${PRESET:-ddpm-cifar10}" --repeats 3 --out "$OUT"

$PY - "$WORK/cifar_like.npz" "${SIZE:-32}" <<'PYEOF'
import sys, numpy as np
rng = np.random.default_rng(0)
size = int(sys.argv[2])
np.savez(sys.argv[1], images=rng.integers(0, 256, size=(5000, size, size, 3), dtype=np.uint8))
PYEOF

STEPS=${STEPS:-300}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-ddpm-cifar10}
SIZE=${SIZE:-32}
$PY -m tdc_agent.cli train-base --run-dir "$WORK/run" -q data.name=npz data.root="$WORK/cifar_like.npz" \
    model.preset=$PRESET run.device=$DEVICE stage1.steps=$STEPS stage1.batch_size=128 stage1.warmup=2 \
    stage1.ckpt_every=100000 stage1.log_every=$(( STEPS / 6 > 0 ? STEPS / 6 : 1 )) sample.num=16 sample.steps=10

$PY - "$WORK/run" "$OUT" "$DEVICE" <<'PYEOF'
import json, sys, time, torch
from pathlib import Path
from tdc_agent.core.io import load_model
from tdc_agent.core.config import SampleConfig, ScheduleConfig
from tdc_agent.models.unet import denoise
from tdc_agent.workflow.sampling import generate
run, out, dev = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
recs = [json.loads(x) for x in (run / "stage1" / "metrics.jsonl").read_text().splitlines() if '"elapsed_s"' in x]
a, b = recs[1], recs[-1]  # skip the first window (cuDNN autotuning, allocator warm-up)
sps = (b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"])
model, meta = load_model(run / "stage1" / "model", dev)
model.eval()
shape, sched = tuple(meta["image_shape"]), ScheduleConfig(**meta["schedule"])
n = 256 if dev == "cuda" else 8
fn = lambda x, t: denoise(model, x, t)  # noqa: E731
generate(fn, shape, sched, SampleConfig(steps=5, num=n, batch_size=n), 0, dev, progress=False)  # warm-up
sync(); t0 = time.time()
generate(fn, shape, sched, SampleConfig(steps=100, num=n, batch_size=n), 0, dev, progress=False)
sync(); secs = time.time() - t0
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
res = {"device": name, "torch": torch.__version__, "train_steps_per_s": sps,
       "train_images_per_s": sps * 128, "batch_size": 128, "sampling_ms_per_image_ddim100": secs / n * 1e3}
(out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
(out / "gpu.md").write_text("| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in res.items()))
print(json.dumps(res, indent=2))
PYEOF
rm -rf "$WORK"
