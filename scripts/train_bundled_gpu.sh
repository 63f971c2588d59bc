#!/usr/bin/env bash
# Round 3 of the bundled emoji models on one GPU: 16x16-token tokenizers (f4) from scratch, then VAR and MAR on
# their tokens while each tokenizer's decoder alone goes on training (its tokens stay put). Runs share the GPU:
# the models are small, so one process alone leaves it mostly idle. Every run is fitted to its minutes
# (`--minutes`), so the whole recipe takes about T1 + T2 + 1 minutes.
#
#   bash scripts/train_bundled_gpu.sh            # DATA=data/emoji RUNS=runs/round3 T1=3.0 T2=4.0
#   EXTRA="--batch-size 4 --warmup 10 --log-every 5" T1=0.5 T2=0.5 bash scripts/train_bundled_gpu.sh  # dry run
#   AUG="--flip --shift 4" bash scripts/train_bundled_gpu.sh   # next round: augmented tokenizer and decoder runs
#   AUG="--flip --shift 4" MAR_DATA=data/emoji-sub RUNS=runs/gpu2 bash scripts/train_bundled_gpu.sh
#                                            # the GPU round to run next (MAR on the 98 subgroups, as CPU round 5)
#
# AUG (default none, as round 3 ran) is passed to every tokenizer and decoder run. Round 3's tokenizers memorised
# the 3448 training emoji (MAR's: 27.1 dB on them, 23.4 on held-out ones, 24.5 on the training images mirrored).
# Its unaugmented decoder-only run ended at 26.0 dB on training batches and 23.36 on held-out emoji; a CPU
# decoder fine-tune with AUG's two flags went on gaining (23.36 -> 23.62 dB in 1000 steps of 32, then 23.90 in
# 3000 more, 23.998 in 4000 more and 24.06 in 4000 more again with --recon-loss mse; see checkpoints/emoji-mar/README.md).
#
# VAR_DATA and MAR_DATA (default DATA) are the image trees each generator learns from: `python -m edifice.data
# emoji --label subgroup --out data/emoji-sub` files the same images by subgroup. The tokenizers learn from DATA.
#
# Writes RUNS/{tok-var,tok-mar,tok-mar1024,dec-var,dec-mar,emoji-var,emoji-mar} (run folders with metrics.csv and
# export/), RUNS/psnr.txt, and the two checkpoints RUNS/ckpt-var, RUNS/ckpt-mar (fp16, decoders swapped in). They
# recommend VAR_SET and MAR_SET (default: the installed models' settings, so they can be scored at once with
# `benchmarks/quality.py --models RUNS/ckpt-var,RUNS/ckpt-mar`); sweep them on a CPU with
# benchmarks/sweep_defaults.py.
#
# Through the device tool (this workplace's lent GPU; 15 minutes of device time, 10 per command, 64 MiB of working
# tree): with T1=3 T2=4 the recipe fits one command. Move tests/fixtures/ (45 MB) out of the checkout for the call
# and put it back after; carry data/emoji (and MAR_DATA's tree, 12 MB each); start the command with
# `export PATH=$(dirname "$(command -v python3)"):$PATH` (its python3 holds torch) and end it by packing what comes
# back into files of at most 16 MiB: `tar cf - RUNS/ckpt-* RUNS/*.log RUNS/psnr.txt | split -b 15M - $OUT/round.tar.`
# (here: `cat round.tar.* | tar xf -`).
set -uo pipefail
DATA=${DATA:-data/emoji}
VAR_DATA=${VAR_DATA:-$DATA}
MAR_DATA=${MAR_DATA:-$DATA}
VAR_SET=${VAR_SET:-cfg=5.0 top_k=0 top_p=0.0 more_smooth=false temperature=0.6 labels=6}
MAR_SET=${MAR_SET:-num_steps=8 cfg=4.0 temperature=0.9 randomness=4.5 schedule=cosine labels=6}
RUNS=${RUNS:-runs/round3}
T1=${T1:-3.0}
T2=${T2:-4.0}
WORKERS=${WORKERS:-3}
mkdir -p "$RUNS"

train() {  # train NAME DATA STAGE OPTIONS...: one run in the background, its output in RUNS/NAME.log
    local name=$1 data=$2; shift 2
    python -m edifice.train "$@" --data "$data/train" --out "$RUNS/$name" --mixed-precision bf16 \
        --workers "$WORKERS" --log-every 50 --save-every 100000 ${EXTRA:-} > "$RUNS/$name.log" 2>&1 &
    PIDS+=($!)
}
finish() {  # wait for the background runs; stop the recipe if one failed
    local ok=0
    for pid in "${PIDS[@]}"; do wait "$pid" || ok=1; done
    PIDS=()
    if [ $ok != 0 ]; then tail -n 5 "$RUNS"/*.log; echo "a run failed"; exit 1; fi
}
PIDS=()

# 1. tokenizers: VAR's multi-scale one ending at 16x16, MAR's single-scale 16x16 with 512 and 1024 codes
within() { echo "--minutes $1 --max-minutes $(awk "BEGIN {print $1 * 1.1}")"; }  # fitted, and a hard stop
TOK="--ch 32 --num-res-blocks 1 --embed-dim 32 --batch-size 128 --lr 1e-3 --warmup 200 $(within $T1) ${AUG:-}"
train tok-var "$DATA" tokenizer --scales 1,2,3,4,6,8,12,16 --codebook-size 512 $TOK
train tok-mar "$DATA" tokenizer --scales 16 --codebook-size 512 $TOK
train tok-mar1024 "$DATA" tokenizer --scales 16 --codebook-size 1024 $TOK
finish
python benchmarks/quality.py --data "$DATA" --tokenizers "$RUNS"/tok-var "$RUNS"/tok-mar "$RUNS"/tok-mar1024 \
    | tee "$RUNS/psnr.txt"
# MAR keeps 512 codes unless they miss 24 dB and 1024 codes gain more than 0.5 dB
MARTOK=$(python - "$RUNS" <<'EOF'
import re, sys
psnr = dict(re.findall(r"(\S+): held-out PSNR (\S+) dB", open(sys.argv[1] + "/psnr.txt").read()))
small, big = (float(psnr[f"{sys.argv[1]}/{n}"]) for n in ("tok-mar", "tok-mar1024"))
print("tok-mar" if small >= 24 or big < small + 0.5 else "tok-mar1024")
EOF
)
echo "MAR tokenizer: $MARTOK" | tee -a "$RUNS/psnr.txt"

# 2. generators on those tokens, and the decoders alone
GEN="--batch-size 128 --lr 6e-4 --warmup 200 --dropout 0.1 $(within $T2)"
train emoji-var "$VAR_DATA" var --tokenizer "$RUNS/tok-var" --depth 8 --width 128 --heads 4 --scale-aug 0.3 $GEN
train emoji-mar "$MAR_DATA" mar --tokenizer "$RUNS/$MARTOK" --depth 6 --width 192 --heads 6 $GEN
DEC="--decoder-only --batch-size 128 --lr 3e-4 --warmup 100 $(within $T2) ${AUG:-}"
train dec-var "$DATA" tokenizer --init "$RUNS/tok-var" $DEC
train dec-mar "$DATA" tokenizer --init "$RUNS/$MARTOK" $DEC
finish
python benchmarks/quality.py --data "$DATA" --tokenizers "$RUNS"/dec-var "$RUNS"/dec-mar | tee -a "$RUNS/psnr.txt"

# 3. the checkpoints: fp16, each with its trained decoder and its recommended settings
python -m edifice resave "$RUNS/emoji-var/export" --out "$RUNS/ckpt-var" --dtype fp16 --tokenizer "$RUNS/dec-var" \
    --set $VAR_SET || exit 1
python -m edifice resave "$RUNS/emoji-mar/export" --out "$RUNS/ckpt-mar" --dtype fp16 --tokenizer "$RUNS/dec-mar" \
    --set $MAR_SET || exit 1
