#!/usr/bin/env bash
# Round 3 of the bundled emoji models on one GPU: 16x16-token tokenizers (f4) from scratch, then VAR and MAR on
# their tokens while each tokenizer's decoder alone goes on training (its tokens stay put). Runs share the GPU:
# the models are small, so one process alone leaves it mostly idle. Every run is fitted to its minutes
# (`--minutes`), so the whole recipe takes about T1 + T2 + 1 minutes.
#
#   bash scripts/train_bundled_gpu.sh            # DATA=data/emoji RUNS=runs/round3 T1=3.0 T2=4.0
#   EXTRA="--batch-size 4 --warmup 10 --log-every 5" T1=0.5 T2=0.5 bash scripts/train_bundled_gpu.sh  # dry run
#   AUG="--flip --shift 4" bash scripts/train_bundled_gpu.sh   # next round: augmented tokenizer and decoder runs
#
# AUG (default none, as round 3 ran) is passed to every tokenizer and decoder run. Round 3's tokenizers memorised
# the 3448 training emoji (MAR's: 27.1 dB on them, 23.4 on held-out ones, 24.5 on the training images mirrored).
# Its unaugmented decoder-only run ended at 26.0 dB on training batches and 23.36 on held-out emoji; a CPU
# decoder fine-tune with AUG's two flags went on gaining (23.36 -> 23.62 dB in 1000 steps of 32, then 23.90 in
# 3000 more, 23.998 in 4000 more and 24.06 in 4000 more again with --recon-loss mse; see checkpoints/emoji-mar/README.md).
#
# Writes RUNS/{tok-var,tok-mar,tok-mar1024,dec-var,dec-mar,emoji-var,emoji-mar} (run folders with metrics.csv and
# export/), RUNS/psnr.txt, and the two checkpoints RUNS/ckpt-var, RUNS/ckpt-mar (fp16, decoders swapped in;
# set their sampling defaults on a CPU with benchmarks/sweep_defaults.py).
set -uo pipefail
DATA=${DATA:-data/emoji}
RUNS=${RUNS:-runs/round3}
T1=${T1:-3.0}
T2=${T2:-4.0}
WORKERS=${WORKERS:-3}
mkdir -p "$RUNS"

train() {  # train NAME STAGE OPTIONS...: one run in the background, its output in RUNS/NAME.log
    local name=$1; shift
    python -m edifice.train "$@" --data "$DATA/train" --out "$RUNS/$name" --mixed-precision bf16 \
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
train tok-var tokenizer --scales 1,2,3,4,6,8,12,16 --codebook-size 512 $TOK
train tok-mar tokenizer --scales 16 --codebook-size 512 $TOK
train tok-mar1024 tokenizer --scales 16 --codebook-size 1024 $TOK
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
train emoji-var var --tokenizer "$RUNS/tok-var" --depth 8 --width 128 --heads 4 --scale-aug 0.3 $GEN
train emoji-mar mar --tokenizer "$RUNS/$MARTOK" --depth 6 --width 192 --heads 6 $GEN
DEC="--decoder-only --batch-size 128 --lr 3e-4 --warmup 100 $(within $T2) ${AUG:-}"
train dec-var tokenizer --init "$RUNS/tok-var" $DEC
train dec-mar tokenizer --init "$RUNS/$MARTOK" $DEC
finish
python benchmarks/quality.py --data "$DATA" --tokenizers "$RUNS"/dec-var "$RUNS"/dec-mar | tee -a "$RUNS/psnr.txt"

# 3. the checkpoints: fp16, each with its trained decoder
for f in var mar; do
    python -m edifice resave "$RUNS/emoji-$f/export" --out "$RUNS/ckpt-$f" --dtype fp16 --tokenizer "$RUNS/dec-$f" || exit 1
done
