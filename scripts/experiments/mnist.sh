#!/usr/bin/env bash
# The MNIST and Fashion-MNIST experiments of EXPERIMENTS.md (011 to 023), in the order they were
# run, on the committed code. Usage: scripts/experiments/mnist.sh DATA_DIR [WORKDIR] [PART ...]
#   DATA_DIR holds mnist/ and fashion_mnist/ (scripts/download_data.py, or
#   ../shared/tools/get_mnist.sh DATA_DIR on machines without internet);
#   WORKDIR defaults to results/mnist; PART picks parts (default: all, in this order):
#   iwae curve seeds iwae50 fashion latent reg width nll5000 long families family_seeds
#   fashion_families family_nll5000 family_seeds_conv family_seeds_transformer transformer_kl
#   burda2 ladder stability dmol convhier.
# Every step is a plain train.py / evaluate.py command; a killed part is continued by running it
# again (finished runs and evaluations are skipped, an interrupted run is resumed).
# Test NLLs: k = 5000 importance samples (the literature's estimator) where the entry says so,
# k = 500 or 1000 elsewhere (one k = 5000 pass over the 10,000 test images costs 3 to 15
# minutes on 2 CPU cores).
set -euo pipefail
DATA=$(realpath "$1"); W=${2:-results/mnist}; shift $(( $# > 1 ? 2 : 1 ))
PARTS=${*:-iwae curve seeds iwae50 fashion latent reg width nll5000 long families family_seeds fashion_families family_nll5000 family_seeds_conv family_seeds_transformer transformer_kl burda2 ladder stability dmol convhier}
cd "$(dirname "$0")/../.."
E=configs/experiment
EVAL=(--config.eval.batch_size=20 --config.eval.iwae_chunk=100)

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

extend() {  # extend RUN_ID CONFIG EPOCHS [overrides...]: the same run continued to EPOCHS
  local id=$1 cfg=$2 epochs=$3; shift 3
  if [ "$(status "$W/checkpoints/$id/metrics.json")" = none ]; then
    train "$id" "$cfg" --config.training.epochs="$epochs" "$@"
  else  # a raised training.epochs continues a completed run (constant learning rate)
    python scripts/train.py --workdir="$W" --run_id="$id" --resume --config.training.epochs="$epochs"
  fi
}

evaluate() {  # evaluate RUN_ID K NAME: test split of model_last with k samples -> eval/NAME.json
  local id=$1 k=$2 name=$3
  local out="$W/checkpoints/$id/eval/$name.json"
  if [ -f "$out" ]; then echo "== $out: exists"; return; fi
  local figures=false; [ "$k" = 5000 ] && figures=true
  python scripts/evaluate.py --run_dir="$W/checkpoints/$id" --checkpoint=last --split=test \
    --config.eval.iwae_samples="$k" --config.eval.figures=$figures "${EVAL[@]}"
  cp "$W/checkpoints/$id/eval/last_test.json" "$out"
}

evaluate_as() {  # evaluate_as RUN_ID K NAME BATCH CHUNK FIGURES: evaluate with these settings
  local id=$1 k=$2 name=$3 batch=$4 chunk=$5 figures=$6
  local out="$W/checkpoints/$id/eval/$name.json"
  if [ -f "$out" ]; then echo "== $out: exists"; return; fi
  python scripts/evaluate.py --run_dir="$W/checkpoints/$id" --checkpoint=last --split=test \
    --config.eval.iwae_samples="$k" --config.eval.batch_size="$batch" \
    --config.eval.iwae_chunk="$chunk" --config.eval.figures="$figures"
  cp "$W/checkpoints/$id/eval/last_test.json" "$out"
}

family_seeds() {  # family_seeds MODEL: seeds 43 and 44 of a family of 017, k = 1000
  for seed in 43 44; do
    train "family-$1-s$seed" $E/mnist_families.yaml --model="$1" \
      --config.data.dir="$DATA/mnist" --config.training.seed=$seed
    evaluate "family-$1-s$seed" 1000 nll1000_e20
  done
}

for part in $PARTS; do
  case $part in
    iwae)  # 012: Burda et al. Table 1 architecture, VAE (k=1) vs IWAE k=5, 20 epochs
      for k in 1 5; do
        train "burda-k$k-s42" $E/mnist_iwae.yaml --config.data.dir="$DATA/mnist" \
          --config.training.iwae_samples=$k --config.training.epochs=20
        evaluate "burda-k$k-s42" 5000 nll5000_e20
      done ;;
    curve)  # 011: the standard VAE 784-500-20, seed 42: test NLL against epochs (one run, resumed)
      for e in 1 2 5 10 20 50; do
        if [ -f "$W/checkpoints/vae-s42/eval/nll500_e$e.json" ]; then continue; fi
        extend vae-s42 $E/mnist.yaml "$e" --config.data.dir="$DATA/mnist"
        evaluate vae-s42 500 "nll500_e$e"
      done ;;
    seeds)  # 011: seeds 43 and 44 at 50 epochs
      for seed in 43 44; do
        train "vae-s$seed" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.training.seed=$seed --config.training.epochs=50
        evaluate "vae-s$seed" 500 nll500_e50
      done ;;
    iwae50)  # 012: k = 1, 5 and 50 at 5 epochs (k = 50 costs about 10x k = 5 per epoch)
      for k in 1 5 50; do
        train "burda-k$k-e5-s42" $E/mnist_iwae.yaml --config.data.dir="$DATA/mnist" \
          --config.training.iwae_samples=$k --config.training.epochs=5
        evaluate "burda-k$k-e5-s42" 1000 nll1000_e5
      done ;;
    fashion)  # 016: Fashion-MNIST, the standard VAE, 50 epochs
      train fashion-vae-s42 $E/fashion_mnist.yaml --config.data.dir="$DATA/fashion_mnist" \
        --config.training.epochs=50
      evaluate fashion-vae-s42 500 nll500_e50 ;;
    latent)  # 014: latent_dim 2 .. 100, 784-500-d, 10 epochs (d = 20 is vae-s42 at epoch 10)
      for d in 2 5 10 50 100; do
        train "latent-d$d" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.model.latent_dim=$d --config.training.epochs=10
        evaluate "latent-d$d" 500 nll500_e10
      done ;;
    reg)  # 013: beta, KL warm-up and free bits, 784-500-20, 10 epochs (beta 1: vae-s42, epoch 10)
      for spec in "beta0.5:--config.training.kl.beta=0.5" \
        "beta2:--config.training.kl.beta=2.0" "beta4:--config.training.kl.beta=4.0" \
        "warmup:--config.training.kl.warmup=linear --config.training.kl.warmup_steps=4210" \
        "freebits:--config.training.kl.free_bits=0.25"; do
        name=${spec%%:*}; read -r -a extra <<< "${spec#*:}"
        train "reg-$name" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.training.epochs=10 "${extra[@]}"
        evaluate "reg-$name" 500 nll500_e10
      done ;;
    width)  # 015: hidden width 100 .. 1000, 784-h-20, 10 epochs (h = 500 is vae-s42 at epoch 10)
      for h in 100 200 1000; do
        train "width-h$h" $E/mnist.yaml --config.data.dir="$DATA/mnist" \
          --config.model.hidden_dims="[$h]" --config.training.epochs=10
        evaluate "width-h$h" 500 nll500_e10
      done ;;
    nll5000)  # k = 5000 for the final models of 011 and 016
      for id in vae-s42 fashion-vae-s42 vae-s43 vae-s44; do evaluate "$id" 5000 nll5000_e50; done ;;
    long)  # 011: seed 42 continued to 100 and 200 epochs
      for e in 100 200; do
        if [ ! -f "$W/checkpoints/vae-s42/eval/nll500_e$e.json" ]; then
          extend vae-s42 $E/mnist.yaml "$e"
          evaluate vae-s42 500 "nll500_e$e"
        fi
      done
      evaluate vae-s42 5000 nll5000_e200 ;;
    families)  # 017: MLP, conv and transformer at ~229k parameters each, 20 epochs
      for m in mlp conv transformer; do
        train "family-$m-s42" $E/mnist_families.yaml --model=$m --config.data.dir="$DATA/mnist"
        evaluate "family-$m-s42" 1000 nll1000_e20
      done ;;
    family_seeds) family_seeds mlp ;;  # 017: seeds 43 and 44 of each family
    family_seeds_conv) family_seeds conv ;;  # about 18 minutes per seed
    family_seeds_transformer) family_seeds transformer ;;
    transformer_kl)  # 018: the transformer family with KL warm-up (10 epochs) or free bits (0.25 nats)
      train family-transformer-warmup-s42 $E/mnist_families.yaml --model=transformer \
        --config.data.dir="$DATA/mnist" --config.training.kl.warmup=linear \
        --config.training.kl.warmup_steps=4210
      evaluate family-transformer-warmup-s42 1000 nll1000_e20
      train family-transformer-freebits-s42 $E/mnist_families.yaml --model=transformer \
        --config.data.dir="$DATA/mnist" --config.training.kl.free_bits=0.25
      evaluate family-transformer-freebits-s42 1000 nll1000_e20 ;;
    family_nll5000)  # 017: k = 5000 for the conv and transformer families (about 45 minutes each)
      for m in conv transformer; do
        evaluate "family-$m-s42" 5000 nll5000_e20
      done ;;
    fashion_families)  # 017: the MLP and conv families on Fashion-MNIST, 20 epochs
      for m in mlp conv; do
        train "fashion-family-$m-s42" $E/mnist_families.yaml --model=$m --data=fashion_mnist \
          --config.data.dir="$DATA/fashion_mnist"
        evaluate "fashion-family-$m-s42" 1000 nll1000_e20
      done ;;
    burda2)  # 019: Burda et al.'s two-layer model, VAE and IWAE k = 5, 20 epochs, k = 1000
      train burda2-vae-s42 $E/burda_two_layer.yaml --config.data.dir="$DATA/mnist"
      train burda2-iwae5-s42 $E/burda_two_layer.yaml --config.data.dir="$DATA/mnist" \
        --config.training.objective=iwae --config.training.iwae_samples=5
      for id in burda2-vae-s42 burda2-iwae5-s42; do
        out="$W/checkpoints/$id/eval/nll1000_e20.json"
        if [ -f "$out" ]; then echo "== $out: exists"; continue; fi
        python scripts/evaluate.py --run_dir="$W/checkpoints/$id" --checkpoint=last \
          --config.eval.iwae_samples=1000 --config.eval.batch_size=100 \
          --config.eval.iwae_chunk=100 --config.eval.figures=false
        cp "$W/checkpoints/$id/eval/last_test.json" "$out"
      done
      # 019's control: the two-layer VAE with the KL warm-up of 020 (10 epochs)
      train burda2-vae-warmup-s42 $E/burda_two_layer.yaml --config.data.dir="$DATA/mnist" \
        --config.training.kl.warmup=linear --config.training.kl.warmup_steps=4210
      evaluate_as burda2-vae-warmup-s42 1000 nll1000_e20 100 100 false ;;
    ladder)  # 020: top-down, Ladder VAE shape, without and with KL warm-up; k = 1000 and 100
      train ladder-s42 $E/ladder_mnist.yaml --config.data.dir="$DATA/mnist"
      train ladder-warmup-s42 $E/ladder_mnist.yaml --config.data.dir="$DATA/mnist" \
        --config.training.kl.warmup=linear
      for id in ladder-s42 ladder-warmup-s42; do
        evaluate_as $id 1000 nll1000_e20 100 100 true
        evaluate_as $id 100 nll100_e20 100 100 false
      done ;;
    stability)  # 023: 020's warm-up run with EMA 0.999, update skipping at 400, both; k = 100
      L=(--config.data.dir="$DATA/mnist" --config.training.kl.warmup=linear)
      train ladder-warmup-ema-s42 $E/ladder_mnist.yaml "${L[@]}" --config.training.ema.decay=0.999
      train ladder-warmup-skip-s42 $E/ladder_mnist.yaml "${L[@]}" \
        --config.training.skip_grad_norm=400
      train ladder-warmup-emaskip-s42 $E/ladder_mnist.yaml "${L[@]}" \
        --config.training.ema.decay=0.999 --config.training.skip_grad_norm=400
      for id in ladder-warmup-ema-s42 ladder-warmup-skip-s42 ladder-warmup-emaskip-s42; do
        evaluate_as $id 100 nll100_e20 100 100 false
      done ;;
    dmol)  # 022: 8-bit MNIST, DMOL likelihood, conv VAE against a top-down hierarchy; k = 20
      for m in conv hierarchical; do
        train dmol-${m:0:4}-s42 $E/dmol_mnist.yaml --model=$m --config.data.dir="$DATA/mnist"
      done
      train dmol-hier-warmup-s42 $E/dmol_mnist.yaml --model=hierarchical \
        --config.data.dir="$DATA/mnist" --config.training.kl.warmup=linear \
        --config.training.kl.warmup_steps=2105
      for id in dmol-conv-s42 dmol-hier-s42 dmol-hier-warmup-s42; do
        evaluate_as $id 20 nll20 500 20 true
      done ;;
    convhier)  # 021: conv top-down hierarchy; 14x14 bottom stage with 5 and 3 groups, 28x28 with 3
      P=(--config.data.dir="$DATA/mnist" --config.model.hierarchical.conv.downsample=[2,2,7]
        --config.training.epochs=4)
      train convhier-g5-s42 $E/conv_hierarchical_mnist.yaml "${P[@]}" \
        --config.model.hierarchical.groups=[1,2,2]
      train convhier-g3-s42 $E/conv_hierarchical_mnist.yaml "${P[@]}"
      train convhier-full-g3-s42 $E/conv_hierarchical_mnist.yaml --config.data.dir="$DATA/mnist"
      for id in convhier-g5-s42 convhier-g3-s42 convhier-full-g3-s42; do
        evaluate_as $id 20 nll20 500 20 true
      done ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
