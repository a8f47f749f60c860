#!/usr/bin/env bash
# GPU benchmark of the CIFAR-10-sized top-down VAE (configs/experiment/cifar10_hierarchical.yaml,
# 40M parameters) on random 32x32x3 data: step time, MFU and peak memory in float32 and bfloat16
# (scripts/benchmark.py), and the first step's time against depth, scanned and unrolled
# (scripts/experiments/hier_depth.py). Results go to OUT_DIR as JSON and logs.
#
#   scripts/experiments/gpu_hierarchical.sh OUT_DIR [BATCH] [WIDTH] [GROUPS] [DEPTHS]
#
# Defaults: batch 32, the config's width 384 and groups [21,10,5,3,1], depths 8,32. Smaller
# values check the script itself on a CPU, e.g. OUT_DIR 4 16 [1,1,1,1,1] 2,4. Update skipping
# is off: random data at initialization would skip most updates and fail the run (the skip is
# a select on the update, the same cost either way).
set -uo pipefail
OUT=${1:?usage: gpu_hierarchical.sh OUT_DIR [BATCH] [WIDTH] [GROUPS] [DEPTHS]}
BATCH=${2:-32}
WIDTH=${3:-384}
GROUPS_PER_STAGE=${4:-[21,10,5,3,1]}
DEPTHS=${5:-8,32}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
DATA=(data.name=synthetic "data.synthetic.shape=[32,32,3]" data.synthetic.num_examples=1000)
flags() { for o in "$@"; do printf -- '--config.%s\n' "$o"; done; }

for dtype in float32 bfloat16; do
  name="cifar10_hier_${dtype}_b${BATCH}"
  mapfile -t F < <(flags "${DATA[@]}" training.batch_size="$BATCH" model.compute_dtype="$dtype" \
    "model.hierarchical.widths=[$WIDTH,$WIDTH,$WIDTH,$WIDTH,$WIDTH]" \
    "model.hierarchical.groups=$GROUPS_PER_STAGE" logging.every_steps=5 training.skip_grad_norm=0)
  python scripts/benchmark.py --config=configs/experiment/cifar10_hierarchical.yaml "${F[@]}" \
    --steps=20 --repeats=3 --out="$OUT/$name.json" > "$OUT/$name.log" 2>&1
  echo "benchmark $dtype, batch $BATCH: exit $? ($(tail -n 1 "$OUT/$name.log"))"
done

# Time to the first step against depth: one stage of n groups at 8x8, the config's blocks.
DEPTH=("${DATA[@]}" training.batch_size="$BATCH" model.likelihood=dmol
  "model.hierarchical.widths=[$WIDTH]" "model.hierarchical.group_dims=[16]"
  "model.hierarchical.conv.downsample=[4]")
for unroll in false true; do
  python scripts/experiments/hier_depth.py --depths="$DEPTHS" --body=conv "${DEPTH[@]}" \
    model.hierarchical.unroll=$unroll > "$OUT/depth_unroll_${unroll}.log" 2>&1
  echo "depth, unroll $unroll: exit $?"
  tail -n 4 "$OUT/depth_unroll_${unroll}.log"
done
