#!/usr/bin/env bash
# Every GPU check of the project in one go, for a short loan of a GPU machine (docs/benchmarks.md
# records what it printed). Each step has its own time limit, so one that overruns or fails
# leaves the others' figures; logs go to $OUT (default ./gpu-logs), a summary is printed last.
#
#   FASTA=path/to/UP000000625_83333.fasta bash benchmarks/gpu_session.sh [quick]
#
# quick (one device call, step limits adding up to 565 s): the ceilings; the T5 forward pass
# profiled; ProtT5-XL-sized embedding under embed's default (FlexAttention, packed, since
# 2026-11-30) and padded flex against the ProtTrans strategy; the host's data path per step (no
# model); one train benchmark with three protrans settings against one baseline (the default:
# compiled blocks on a CUDA GPU since 2026-11-30; with --token-micro-batches --packing; the same
# with 2 data-loader workers); ProtBert-sized embedding against the ProtTrans batches under both
# kernel policies.
#
# levers (the second call of a session, step limits 380 s, in order of what it decides):
# the train levers left (one micro-batch of 64 per step, with and without token micro-batches
# and packing), a profile of protrans's own training loop at its best setting (compiled blocks,
# token micro-batches, packing: device busy against wall time, launches, top kernels; since
# 2026-12-02, in place of gpu_profile.py's training part, whose tables were measured on
# 2026-11-30 and which profiles an eager model outside the loop) and the GPU tests of packing
# and flex. A session has
# 15 minutes of device time, machine start included: quick, then levers at once while the machine
# is warm (it goes back after 30 s idle).
#
# mfu (one device call, step limits 580 s): what the one target still open needs (train's MFU;
# embed's targets are met): env, static shapes and CUDA graphs against the best setting so far
# (train_static), the levers and the loop profile, the GPU tests last. Since 2026-12-02 the first call of a session: quick + levers (945 s of limits) do
# not fit 15 minutes with the machine's start, so levers (the MFU part) would be the one cut.
#
# Without a mode (or with `full`), every step (step limits adding up to 36 minutes: more than two
# 10-minute device calls, so pick steps by their exact names, STEPS="profile train_variants ...",
# and run the rest later). The exit status is 1 when a step failed, 3 without a CUDA device.
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

MODE=${1:-full}
case $MODE in  # (a mistyped mode ran every step)
    quick) STEPS=${STEPS:-"env profile_t5 embed_t5_flex train_data train_variants embed_bert_fair"} ;;
    levers) STEPS=${STEPS:-"train_levers train_loop_profile tests_quick"} ;;
    mfu) STEPS=${STEPS:-"env train_static train_levers train_loop_profile tests_quick"} ;;
    full) ;;
    *) echo "gpu_session.sh: unknown mode '$MODE' (quick, levers, mfu or full)" >&2; exit 2 ;;
esac
# Without a GPU every step failed with a traceback (train_bench measured the CPU instead, for its
# whole limit) and the script exited 0.
if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu_session.sh: no CUDA device (torch.cuda.is_available() is False): nothing to measure" >&2
    exit 3
fi
FAILED=""

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
    [ "$rc" -eq 0 ] || FAILED="$FAILED $name($rc)"
}

step env 50 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
    $PY -c 'import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__)'; \
    $PY -m protrans_cli env; \
    $PY benchmarks/gpu_peak.py"
# SM clock, power and throttle reasons once a second through every step (a card held below its
# clock under sustained load would explain device time far above what the FLOPs need).
REASONS=clocks_event_reasons.active  # named clocks_throttle_reasons.active before driver 535
nvidia-smi --query-gpu=$REASONS --format=csv >/dev/null 2>&1 || REASONS=clocks_throttle_reasons.active
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,utilization.gpu,$REASONS \
    --format=csv -lms 1000 >"$OUT/clocks.csv" 2>&1 &
CLOCKS=$!
trap 'kill $CLOCKS 2>/dev/null' EXIT
# Where a batch's time goes (phases, attention kernels, fixed vs varying shapes, profiler).
step profile_t5 90 $PY benchmarks/gpu_profile.py --fasta "$FASTA" --family t5 --preset prot_t5_xl --skip-train \
    --num-batches 20 --profile-out "$OUT/profile_t5_tables.txt"
# flex first (the figure this step is for), then the ProtTrans strategy it is compared with,
# then flex over packed rows (protrans's padded default ran 47.6k residues/s on 2026-11-29 and
# its code has not changed since); each run prints its residues/s as it ends, so a cut step
# keeps what finished
step embed_t5_flex 170 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 --preset prot_t5_xl \
    --strategies flex_packed,prottrans,flex --max-tokens default --per-protein
step profile 140 $PY benchmarks/gpu_profile.py --fasta "$FASTA" --profile-out "$OUT/profile_tables.txt"
step embed_t5_pp 100 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 --preset prot_t5_xl \
    --strategies prottrans,protrans --max-tokens 4000,default --per-protein
# ProtBert-sized, per-protein: the ProtTrans batches under PyTorch's kernel choice (cuDNN attention
# on Hopper, a plan for every new shape: what the script gets) and under protrans's (what batching
# alone gains), against protrans padded and packed (packed: embed's default on such a GPU; the
# benchmark's embedder does not go through build_embedder's packing_by_default). The ProtTrans
# strategy first: it pays the run's one-time warm-up, which charged to prottrans_auto (first before
# 2026-11-30) understated the kernel-fair baseline this step exists to measure.
step embed_bert_fair 80 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --strategies prottrans,prottrans_auto,protrans,packed --max-tokens default --per-protein
step embed_bert_pp 60 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --strategies prottrans,protrans,packed --max-tokens 4000,default --per-protein
step embed_t5_compiled 190 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 \
    --preset prot_t5_xl --strategies prottrans,protrans,compiled --max-tokens default --per-protein
step embed_t5 240 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 --preset prot_t5_xl \
    --strategies prottrans,script,protrans,naive --max-tokens 4000,default --tmpdir "$SCRATCH"
step embed_bert 180 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --strategies prottrans,script,protrans,packed,naive --max-tokens 4000,default --tmpdir "$SCRATCH"
# float16 (a V100's or T4's dtype): T5's `wo` in float16 and the overflow guard's hooks, against
# the ProtTrans script's model.half() (no guard): what the guard costs (not in quick or levers)
step embed_t5_fp16 120 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family t5 --preset prot_t5_xl \
    --dtype float16 --strategies prottrans,protrans --max-tokens default --per-protein
# what embed spends around the model on this machine (pinned staging, host copies, HDF5 writes)
step embed_host 60 $PY benchmarks/embed_bench.py --fasta "$FASTA" --device cuda --family bert --preset prot_bert \
    --host-only --strategies prottrans,protrans --max-tokens 4000,default --tmpdir "$SCRATCH"
# PyTorch 2.14+ on Hopper or data-centre Blackwell: packed batches' varlen_attn under PyTorch's
# choice (cuDNN's ragged attention, a plan per new shape) against protrans's (Flash, the default
# --sdpa-kernels auto). Before 2.14 varlen_attn always runs Flash and the two should tie (not in
# quick or levers).
step embed_bert_packed_policy 90 bash -c "for policy in auto torch; do echo \"## --sdpa-kernels \$policy\"; \
    $PY benchmarks/embed_bench.py --fasta '$FASTA' --device cuda --family bert --preset prot_bert \
    --strategies packed --max-tokens default --per-protein --sdpa-kernels \$policy || exit 1; done"
# The host's data path alone on this machine's CPU (no model): with --num-workers 0 the device
# waits this long every step (on the 2-core CPU machine 8-13 ms, against ~140 ms a step at 125k
# tokens/s, 2026-12-01).
step train_data 25 $PY benchmarks/train_bench.py --data-only --repeats 1 --fasta "$FASTA" --token-micro-batches --packing
# 10 warm-up steps: what a long run's steady state looks like, not its first shapes.
# Several protrans settings against one baseline run, each printed as it ends ("cudnn+pad64": the
# baseline's cuDNN attention, its plans built once each over few shapes)
# ("plain": train's default, which compiles the blocks on a CUDA GPU since 2026-11-30; "workers":
# the next step's data made by 2 forked workers while the device computes)
step train_variants 150 $PY benchmarks/train_bench.py --report-after 142 --gpu --fasta "$FASTA" --repeats 1 --num-steps 40 \
    --warmup 10 --variants plain,tokens+packing,tokens+packing+workers --json "$OUT/train_variants.json"
# --static-shapes (one packed shape per phase: blocks compiled without dynamic shapes) and CUDA
# graphs over it (--compile-mode reduce-overhead), against the best measured setting (30.4% MFU on
# 2026-11-30) and the baseline in the same run (mfu's first train step since 2026-12-07, in place
# of train_variants, whose best variant is its first here: quick keeps train_variants)
step train_static 150 $PY benchmarks/train_bench.py --report-after 142 --gpu --fasta "$FASTA" --repeats 1 --num-steps 40 \
    --warmup 10 --variants tokens+packing+compile,tokens+packing+compile+static,tokens+packing+compile+static+cudagraphs \
    --json "$OUT/train_static.json"
# one micro-batch of 64 per step (the step was 72% device-busy at 16 x 512 on 2026-11-30: fewer,
# larger launches), with the token micro-batches and packing first, then alone
step train_levers 200 $PY benchmarks/train_bench.py --report-after 192 --gpu --fasta "$FASTA" --repeats 1 \
    --num-steps 40 --warmup 10 --variants tokens+packing+mb64,mb64 --json "$OUT/train_levers.json"
# where the time of protrans's own step goes at its best setting (levers: second, before the
# GPU tests; steps run in the order of these lines, not of STEPS): 3 steps profiled after 11
# (compilation and first shapes), the step marked by the optimizer's step
step train_loop_profile 120 $PY benchmarks/train_bench.py --gpu --fasta "$FASTA" --warmup 10 --profile-steps 3 \
    --variants tokens+packing --profile-out "$OUT/train_loop_profile.txt"
# the training part of gpu_profile.py alone: an eager model outside the loop, fixed, new and
# repeated lengths, token-sized micro-batches, a fixed-length step's profile (not in quick or levers)
step train_profile 100 $PY benchmarks/gpu_profile.py --fasta "$FASTA" --skip-embed
step train_recompute 100 $PY benchmarks/train_bench.py --report-after 92 --gpu --fasta "$FASTA" --repeats 1 --activation-checkpointing
step tests_quick 60 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_train_packing.py \
    tests/test_embed_models.py tests/test_attention.py tests/test_embed_flex.py -k "pack or varlen or cudnn or flex"
step tests 80 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_embed_models.py tests/test_train_loop.py \
    tests/test_heads_fit.py tests/test_train_packing.py tests/test_attention.py tests/test_embed_flex.py
# the GPU tests of what has never run on a GPU (knn's search, contacts and variants in bfloat16; since
# 2026-12-03; perplexity's tables in bfloat16 and float32 against the CPU's, and generate on cuda, since 2026-12-07;
# STEPS="tests_new"), contacts' memory against transformers' predict_contacts at ESM-2
# 650M's shape, and variants against predict.py's strategy at that shape (one residue masked a pass)
step tests_new 60 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_knn.py tests/test_contacts.py \
    tests/test_variants.py tests/test_perplexity.py tests/test_embed_chains.py tests/test_generate.py \
    tests/test_translate.py
step contacts_bench 90 $PY benchmarks/contacts_bench.py --preset esm2_t33_650M --lengths 300 1022 --batch 2 --device cuda
step variants_bench 90 $PY benchmarks/variants_bench.py --preset esm2_t33_650M --length 300 --device cuda

kill $CLOCKS 2>/dev/null
echo "=== summary"
echo "--- clocks.csv: SM clock MHz (min / median / max), most frequent throttle reasons"
if [ -s "$OUT/clocks.csv" ]; then  # (a short run can end before the sampler wrote anything)
    awk -F', ' 'NR > 1 && $2 ~ /MHz/ {split($2, a, " "); print a[1]}' "$OUT/clocks.csv" | sort -n | \
        awk '{v[NR] = $1} END {if (NR) print v[1] " / " v[int((NR + 1) / 2)] " / " v[NR] " over " NR " samples"}'
    awk -F', ' 'NR > 1 {print $NF}' "$OUT/clocks.csv" | sort | uniq -c | sort -rn | head -3
fi
# ("[1/1] name ... residues/s": embed_bench's line as each run ends, the only figure of a step its
# limit cut before the "best" lines; "NAME: left out:": a strategy that could not be built)
for log in "$OUT"/*.log; do
    echo "--- $(basename "$log")"
    grep -E "^(torch|name|NVIDIA|cuda:|varlen|FlexAttention|bf16|sustained|linear|copy|host|embed phases|  |train )|^## |budgets|^best|/ (naive|prottrans)|TFLOP/s =|^(baseline|protrans|speed-up)|tokens/s \(best of| run [0-9]+: |passed|failed|rror|^partial|^baseline run|^\[[0-9]+/[0-9]+\] |: left out: " \
        "$log" | tail -n 40
done
if [ -n "$FAILED" ]; then
    echo "=== steps that failed or ran past their limit:$FAILED"
    exit 1
fi
