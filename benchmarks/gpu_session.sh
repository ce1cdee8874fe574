#!/usr/bin/env bash
# Every GPU check of the project in one go, for a short loan of a GPU machine (docs/benchmarks.md
# records what it printed). Each step has its own time limit, so one that overruns or fails
# leaves the others' figures; logs go to $OUT (default ./gpu-logs), a summary is printed last.
#
#   FASTA=path/to/UP000000625_83333.fasta bash benchmarks/gpu_session.sh [quick]
#
# quick: the ceilings, the profile, per-protein embedding of both models and one run of the train
# benchmark padded and one with --packing, plus the packing and attention-kernel GPU tests (step
# limits add up to 560 s: one device call); without it, every step (up to 22 minutes: more than two
# 10-minute device calls, so pick steps with STEPS="profile embed_t5 ..." and run the rest later).
#
# levers: torch.compile for embed (ProtT5-XL shape, compiled vs not, per-protein; about 4 minutes
# with env): the second call of a session, after quick (a session has 15 minutes of device time,
# machine start included). `train --compile` is in the full list.
#
# Runs from the repository root with the machine's own python3 (torch and transformers already
# there): the package is used from the source tree through PYTHONPATH, nothing is installed.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
FASTA=${FASTA:-../shared/data/proteomes/UP000000625_83333.fasta}
[ -f "$FASTA" ] || FASTA=.devdata/UP000000625_83333.fasta
if [ ! -f "$FASTA" ]; then
    # ../shared does not travel to a device machine: copy the proteome into the git-ignored
    # .devdata/ first and carry it (run(..., carry=[".devdata"])).
    echo "no proteome: mkdir -p .devdata && cp ../shared/data/proteomes/UP000000625_83333.fasta .devdata/," \
         "then carry .devdata (or set FASTA=...)" >&2
    exit 2
fi
# protrans writes its HDF5 file where the baselines keep their arrays: in memory
SCRATCH=/dev/shm
[ -d "$SCRATCH" ] || SCRATCH=${TMPDIR:-/tmp}

if [ "${1:-full}" = levers ] && [ -z "${STEPS:-}" ]; then
    STEPS="env embed_t5_compiled"  # quick has measured the rest
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
        return 0
    fi
    echo "=== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $(($(date +%s) - start)) s"
}

step env 50 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
    $PY -c 'import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__)'; \
    $PY benchmarks/gpu_peak.py"
MODE=${1:-full}
# SM clock, power and throttle reasons once a second through every step (a card held below its
# clock under sustained load would explain device time far above what the FLOPs need).
REASONS=clocks_event_reasons.active  # named clocks_throttle_reasons.active before driver 535
nvidia-smi --query-gpu=$REASONS --format=csv >/dev/null 2>&1 || REASONS=clocks_throttle_reasons.active
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,utilization.gpu,$REASONS \
    --format=csv -lms 1000 >"$OUT/clocks.csv" 2>&1 &
CLOCKS=$!
trap 'kill $CLOCKS 2>/dev/null' EXIT
# First: where a batch's time goes (phases, attention kernels, fixed vs varying shapes, profiler).
step profile 140 $PY benchmarks/gpu_profile.py --fasta "$FASTA" --profile-out "$OUT/profile_tables.txt"
step embed_t5_pp 70 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 --preset prot_t5_xl \
    --strategies prottrans,protrans --max-tokens 4000,default --per-protein
step embed_bert_pp 60 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --strategies prottrans,protrans,packed --max-tokens 4000,default --per-protein
if [ "$MODE" = levers ]; then
    step embed_t5_compiled 190 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 \
        --preset prot_t5_xl --strategies prottrans,protrans,compiled --max-tokens default --per-protein
elif [ "$MODE" = quick ]; then
    # 10 warm-up steps: what a long run's steady state looks like, not its first shapes
    step train 95 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --repeats 1 --num-steps 40 --warmup 10 \
        --json "$OUT/train.json"
    step train_packed 95 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --repeats 1 --num-steps 40 \
        --warmup 10 --packing --json "$OUT/train_packed.json"
    step tests_packing 50 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_train_packing.py \
        tests/test_embed_models.py tests/test_attention.py -k "pack or varlen or cudnn"
else
step embed_t5 240 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 --preset prot_t5_xl \
    --strategies prottrans,script,protrans,naive --max-tokens 4000,default --tmpdir "$SCRATCH"
step embed_bert 180 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --strategies prottrans,script,protrans,packed,naive --max-tokens 4000,default --tmpdir "$SCRATCH"
# what embed spends around the model on this machine (pinned staging, host copies, HDF5 writes)
step embed_host 60 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --host-only --strategies prottrans,protrans --max-tokens 4000,default --tmpdir "$SCRATCH"
step train 100 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --json "$OUT/train.json"
step train_packed 100 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --packing --json "$OUT/train_packed.json"
step train_recompute 100 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --repeats 1 --activation-checkpointing
step train_pad128 80 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --repeats 1 --pad-multiple 128
step tests 80 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_embed_models.py tests/test_train_loop.py \
    tests/test_heads_fit.py tests/test_train_packing.py tests/test_attention.py
step train_compile 120 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --compile --warmup 10 --num-steps 40 \
    --repeats 1 --json "$OUT/train_compile.json"
fi

kill $CLOCKS 2>/dev/null
echo "=== summary"
echo "--- clocks.csv: SM clock MHz (min / median / max), most frequent throttle reasons"
awk -F', ' 'NR > 1 && $2 ~ /MHz/ {split($2, a, " "); print a[1]}' "$OUT/clocks.csv" | sort -n | \
    awk '{v[NR] = $1} END {if (NR) print v[1] " / " v[int((NR + 1) / 2)] " / " v[NR] " over " NR " samples"}'
awk -F', ' 'NR > 1 {print $NF}' "$OUT/clocks.csv" | sort | uniq -c | sort -rn | head -3
for log in "$OUT"/*.log; do
    echo "--- $(basename "$log")"
    grep -E "^(torch|name|NVIDIA|bf16|sustained|linear|copy|host|embed phases|  |train )|^## |budgets|^best|/ (naive|prottrans)|TFLOP/s =|^(baseline|protrans|speed-up)|passed|failed|rror" \
        "$log" | tail -n 40
done
