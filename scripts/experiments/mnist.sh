#!/usr/bin/env bash
# The MNIST and Fashion-MNIST experiments of EXPERIMENTS.md (011 to 016), in the order they were
# run, on the committed code. Usage: scripts/experiments/mnist.sh DATA_DIR [WORKDIR] [PART ...]
#   DATA_DIR holds mnist/ and fashion_mnist/ (scripts/download_data.py, or
#   ../shared/tools/get_mnist.sh DATA_DIR on machines without internet);
#   WORKDIR defaults to results/mnist; PART picks parts (default: all, in this order):
#   iwae vae iwae50 curve fashion latent reg vae5000.
# Every step is a plain train.py / evaluate.py command; a killed part is continued by running it
# again (finished runs are skipped, an interrupted one is resumed).
set -euo pipefail
DATA=$(realpath "$1"); W=${2:-results/mnist}; shift $(( $# > 1 ? 2 : 1 ))
PARTS=${*:-iwae vae iwae50 curve fashion latent reg vae5000}
cd "$(dirname "$0")/../.."
E=configs/experiment
NLL=(--config.eval.iwae_samples=5000 --config.eval.batch_size=20 --config.eval.iwae_chunk=100)
NLL500=(--config.eval.iwae_samples=500 --config.eval.batch_size=20 --config.eval.iwae_chunk=100
  --config.eval.figures=false)

status() { python -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$1" 2>/dev/null || echo none; }

train() {  # train RUN_ID CONFIG [overrides...]: fresh, resumed or skipped when complete
  local id=$1 cfg=$2; shift 2
  local s; s=$(status "$W/checkpoints/$id/metrics.json")
  if [ "$s" = completed ]; then echo "== $id: complete"; return; fi
  if [ "$s" = none ]; then
    python scripts/train.py --config="$cfg" --workdir="$W" --run_id="$id" "$@"
  else
    python scripts/train.py --workdir="$W" --run_id="$id" --resume "$@"
  fi
}

evaluate() {  # evaluate RUN_ID NAME [eval overrides]: test split of model_last -> eval/NAME.json
  local id=$1 name=$2; shift 2
  local out="$W/checkpoints/$id/eval/$name.json"
  if [ -f "$out" ]; then echo "== $out: exists"; return; fi
  python scripts/evaluate.py --run_dir="$W/checkpoints/$id" --checkpoint=last --split=test "$@"
  cp "$W/checkpoints/$id/eval/last_test.json" "$out"
}

for part in $PARTS; do
  case $part in
    vae)  # 011: the standard VAE 784-500-20, 3 seeds, 20 epochs (k = 5000 for seed 42 here)
      for seed in 42 43 44; do
        train "vae-s$seed" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.training.seed=$seed --config.training.epochs=20
        evaluate "vae-s$seed" "nll500_e20" "${NLL500[@]}"
      done
      evaluate "vae-s42" "nll5000_e20" "${NLL[@]}" ;;
    vae5000)  # 011: k = 5000 for the other two seeds
      for seed in 43 44; do evaluate "vae-s$seed" "nll5000_e20" "${NLL[@]}"; done ;;
    iwae)  # 012: Burda et al. Table 1 architecture, VAE (k=1) vs IWAE k=5, 20 epochs
      for k in 1 5; do
        train "burda-k$k-s42" $E/mnist_iwae.yaml --config.data.dir="$DATA/mnist" \
          --config.training.iwae_samples=$k --config.training.epochs=20
        evaluate "burda-k$k-s42" "nll5000_e20" "${NLL[@]}"
      done ;;
    iwae50)  # 012: k = 1, 5 and 50 at 5 epochs (k = 50 costs about 10x k = 5 per epoch)
      for k in 1 5 50; do
        train "burda-k$k-e5-s42" $E/mnist_iwae.yaml --config.data.dir="$DATA/mnist" \
          --config.training.iwae_samples=$k --config.training.epochs=5
        evaluate "burda-k$k-e5-s42" "nll5000_e5" "${NLL[@]}"
      done ;;
    curve)  # 011: test NLL against epochs, one seed, by resuming a run to longer budgets
      for e in 1 2 5 10 20; do
        if [ -f "$W/checkpoints/curve-s42/eval/nll500_e$e.json" ]; then continue; fi
        if [ "$(status "$W/checkpoints/curve-s42/metrics.json")" = none ]; then
          train "curve-s42" $E/mnist.yaml --config.data.dir="$DATA/mnist" --config.training.epochs=$e
        else  # the same run continued to a longer budget (training.epochs may change on resume)
          python scripts/train.py --workdir="$W" --run_id=curve-s42 --resume --config.training.epochs=$e
        fi
        evaluate "curve-s42" "nll500_e$e" "${NLL500[@]}"
      done ;;
    fashion)  # 016: Fashion-MNIST, the standard VAE
      train "fashion-vae-s42" $E/fashion_mnist.yaml --config.data.dir="$DATA/fashion_mnist" \
        --config.training.epochs=20
      evaluate "fashion-vae-s42" "nll5000_e20" "${NLL[@]}" ;;
    latent)  # 014: latent_dim 2 .. 100, 784-500-d, 5 epochs
      for d in 2 5 10 20 50 100; do
        train "latent-d$d" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.model.latent_dim=$d --config.training.epochs=5
        evaluate "latent-d$d" "nll500_e5" "${NLL500[@]}"
      done ;;
    reg)  # 013: beta, KL warm-up and free bits, 784-500-20, 5 epochs
      for spec in "beta2:--config.training.kl.beta=2.0" "beta0.5:--config.training.kl.beta=0.5" \
        "warmup:--config.training.kl.warmup=linear --config.training.kl.warmup_steps=2000" \
        "freebits:--config.training.kl.free_bits=0.25" "plain:"; do
        name=${spec%%:*}; read -r -a extra <<< "${spec#*:}"
        train "reg-$name" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.training.epochs=5 "${extra[@]}"
        evaluate "reg-$name" "nll500_e5" "${NLL500[@]}"
      done ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
