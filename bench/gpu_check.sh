#!/usr/bin/env bash
# The prepared GPU check (issue 12): at most ~6 minutes on one H100, every step under `timeout`.
#
# Prints and writes to "$OUT" (./gpu-check-out when unset):
#   1. candidate evaluations per second  (bench/candidate_speed.py --device cuda, ResNet-56, 1,000 + 256 images)
#   2. fine-tuning seconds per epoch     (bench/finetune_speed.py, ResNet-56 with KD, 50,000 images, eager;
#                                         COMPILE=1 adds a torch.compile run)
#   3. CUDA latency of a flops=0.5 ResNet-56 relative to the original, batch 1 and 256, timed in
#      interleaved pairs with CUDA events, with channel alignment (--round-to 8) and without (--round-to 1)
#   4. `rl` vs `random` at 200 evaluations (search only, test-halves protocol, report-half top-1 after
#      BN recalibration, no fine-tuning), the two searches sharing the GPU
# Files under $OUT: gpu_check.log (everything), gpu_check.md (the results), gpu_check.json.
# A step that runs out of its time shows "exit 124" in the log and FAILED in the results; the
# whole check stays within BUDGET_S seconds (default 355; the steps' own caps add up to more).
#
# On the device machine, from the project root (after `../shared/device/pack` here; carry [".gpu"]):
#     source .gpu/env.sh && bash bench/gpu_check.sh
# A reduced end-to-end rehearsal on the CPU (ResNet-20, a few candidates/batches/evaluations):
#     QUICK=1 bash bench/gpu_check.sh        (or: bash bench/gpu_check.sh --dry-run)
set -uo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--dry-run" ] && QUICK=1
QUICK=${QUICK:-0}
COMPILE=${COMPILE:-0}
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: > "$LOG"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
if [ -z "${PRUNER_DATA_ROOT:-}" ] && [ -f .gpu/env.sh ]; then source .gpu/env.sh >> "$LOG" 2>&1; fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# BUDGET_S: the whole check's time; each step gets its cap (x SCALE) or what is left of it
if [ "$QUICK" = 1 ]; then
  DEVICE=cpu MODEL=resnet20 CANDIDATES=2 SEARCH_IMAGES=100 RECAL_IMAGES=32 FT_EPOCHS=2 FT_BATCHES=2
  FT_BATCH=64 LAT_BATCH=2 EVALS=6 REPORT_IMAGES=200 BUDGET_S=${BUDGET_S:-2400} SCALE=${SCALE:-6}
else
  DEVICE=cuda MODEL=resnet56 CANDIDATES=20 SEARCH_IMAGES=1000 RECAL_IMAGES=256 FT_EPOCHS=3 FT_BATCHES=
  FT_BATCH=128 LAT_BATCH=256 EVALS=200 REPORT_IMAGES= BUDGET_S=${BUDGET_S:-355} SCALE=${SCALE:-1}
fi
T0=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }

# step NAME CAP_SECONDS CMD...: run CMD under timeout (its cap, or what is left of BUDGET_S), log it
step() {
  local name=$1 cap=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET_S - ($(date +%s) - T0) ))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 5 ]; then say "== $name: skipped (time budget of ${BUDGET_S}s spent)"; return 124; fi
  say "== $name (at most ${cap}s): $*"
  local s=$(date +%s)
  timeout -k 5 "$cap" "$@" > "$WORK/$name.out" 2>&1
  local rc=$?
  cat "$WORK/$name.out" >> "$LOG"
  tail -n 4 "$WORK/$name.out"
  say "== $name: exit $rc after $(( $(date +%s) - s ))s"
  return $rc
}

say "gpu check: QUICK=$QUICK device=$DEVICE model=$MODEL budget=${BUDGET_S}s out=$OUT work=$WORK"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"
$PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else f'CPU ({torch.get_num_threads()} threads)')" > "$WORK/device.txt" 2>/dev/null
if [ "$DEVICE" = cuda ] && ! $PY -c "import torch; raise SystemExit(not torch.cuda.is_available())"; then
  say "error: no CUDA device; for a rehearsal on the CPU run QUICK=1 bash bench/gpu_check.sh"; exit 2
fi

# 0. decode the data once (later steps read the decode cache)
step data 90 $PY -c "from pruner.data import load_data; d = load_data('cifar10-jpeg', protocol='test-halves'); print(d.describe()['sizes'])"

# 1. candidates per second
step candidates 60 $PY bench/candidate_speed.py --device "$DEVICE" --model "$MODEL" --data cifar10-jpeg \
  --candidates "$CANDIDATES" --search-images "$SEARCH_IMAGES" --recal-images "$RECAL_IMAGES"

# 2. fine-tuning seconds per epoch (ResNet-56 with KD)
step finetune 75 $PY bench/finetune_speed.py --device "$DEVICE" --model "$MODEL" --data cifar10-jpeg \
  --epochs "$FT_EPOCHS" --batch-size "$FT_BATCH" ${FT_BATCHES:+--max-batches $FT_BATCHES} --json "$WORK/finetune.json"
if [ "$COMPILE" = 1 ]; then
  step finetune_compile 150 $PY bench/finetune_speed.py --device "$DEVICE" --model "$MODEL" --data cifar10-jpeg \
    --epochs "$FT_EPOCHS" --batch-size "$FT_BATCH" ${FT_BATCHES:+--max-batches $FT_BATCHES} --compile \
    --json "$WORK/finetune_compile.json"
fi

# 3. latency of a flops=0.5 model vs the original on the device, batch 1 and LAT_BATCH, aligned or not
PRUNE=($PY -m pruner prune --model "$MODEL" --data cifar10-jpeg --protocol test-halves --budget flops=0.5
       --device "$DEVICE" --finetune-epochs 0 --no-export --search-images "$SEARCH_IMAGES"
       --recal-images "$RECAL_IMAGES" ${REPORT_IMAGES:+--report-images $REPORT_IMAGES})
if $PY -m pruner prune --help 2>/dev/null | grep -q -- "--round-to"; then
  for r in 8 1; do
    step "latency_round$r" 60 "${PRUNE[@]}" --strategy uniform --search-evals 1 --latency-batch "$LAT_BATCH" \
      --round-to "$r" --out "$WORK/latency_round$r"
  done
else
  say "== latency: this checkout has no --round-to (channel alignment); timing without it only"
  step latency_unaligned 60 "${PRUNE[@]}" --strategy uniform --search-evals 1 --latency-batch "$LAT_BATCH" \
    --out "$WORK/latency_round1"
fi

# 4. rl vs random at EVALS evaluations, side by side on the device
left=$(( BUDGET_S - ($(date +%s) - T0) ))
[ "$left" -lt 5 ] && left=5
say "== search: rl and random, $EVALS evaluations each, concurrently (at most ${left}s)"
pids=()
for s in rl random; do
  timeout -k 5 "$left" "${PRUNE[@]}" --strategy "$s" --search-evals "$EVALS" \
    --out "$WORK/search_$s" > "$WORK/search_$s.out" 2>&1 &
  pids+=($!)
done
for i in 0 1; do wait "${pids[$i]}"; say "== search ${i}: exit $?"; done
for s in rl random; do cat "$WORK/search_$s.out" >> "$LOG"; done

# the results table
$PY - "$WORK" "$OUT" "$QUICK" "$EVALS" "$(( $(date +%s) - T0 ))" <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys
from pathlib import Path

work, out, quick, evals, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
res, lines = {"quick": quick, "seconds": int(seconds)}, []

def read(p):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None

env = (work / "candidates.out").read_text() if (work / "candidates.out").exists() else ""
res["device"] = (work / "device.txt").read_text().strip() if (work / "device.txt").exists() else "?"
m = re.search(r"([\d.]+) candidates/s, (\d+) ms each", env)
res["candidates_per_s"] = float(m.group(1)) if m else None
lines.append(f"candidate evaluations: {res['candidates_per_s']} /s" if m else "candidate evaluations: FAILED (see log)")
res["breakdown_ms"] = dict(re.findall(r"^\s+(\S+)\s+(\d+) ms/candidate", env, re.M))
for name in ("finetune", "finetune_compile"):
    ft = read(work / f"{name}.json")
    if ft is not None:
        res[name] = ft
        lines.append(f"{name.replace('_', ' ')}: {ft['s_per_full_epoch']} s per full epoch ({ft['model']}, KD {ft['kd']}, "
                     f"{ft['train_images']} images, batch {ft['batch_size']}, epochs {ft['epoch_seconds']})")
    elif (work / f"{name}.out").exists():
        lines.append(f"{name.replace('_', ' ')}: FAILED (see log)")
res["latency"] = {}
for r in ("8", "1"):
    s = read(work / f"latency_round{r}" / "summary.json")
    if not s or s.get("status") != "done":
        continue
    p = s["pruned"]
    entries = p.get("latency") or [{"batch": 1, "vs_base": p.get("latency_vs_base"), "device": "?"}]
    res["latency"][f"round_to={r}"] = {"macs_frac": p["macs"] / s["base"]["macs"], "entries": entries}
    ratios = ", ".join(f"batch {e['batch']}: {e['vs_base']:.3f}" for e in entries)
    lines.append(f"latency pruned/base (flops=0.5 uniform, round_to {r}, MACs {p['macs'] / s['base']['macs']:.3f} "
                 f"of base) on {entries[0]['device']}: {ratios}")
if not res["latency"]:
    lines.append("latency: FAILED (see log)")
res["search"] = {}
for strat in ("rl", "random"):
    s = read(work / f"search_{strat}" / "summary.json")
    if not s or s.get("status") != "done":
        lines.append(f"{strat}: {'FAILED: ' + str(s.get('error')) if s else 'did not finish'}")
        continue
    row = {"evaluations": s["search"]["evaluations"], "best_val_top1": s["search"]["best_val_top1"],
           "report_top1": s["pruned"]["top1"], "base_report_top1": s["base"]["top1"],
           "macs_frac": s["pruned"]["macs"] / s["base"]["macs"], "search_s": s["search"]["seconds"]}
    res["search"][strat] = row
    lines.append(f"{strat}: {row['evaluations']} evaluations in {row['search_s']:.0f} s, search top-1 "
                 f"{row['best_val_top1']:.2f}, report top-1 {row['report_top1']:.2f} (base {row['base_report_top1']:.2f}), "
                 f"MACs {row['macs_frac']:.3f}")
head = f"# GPU check ({'QUICK rehearsal, ' if quick else ''}{res['device']}, {seconds} s)"
text = "\n".join([head, "", *[f"- {l}" for l in lines]]) + "\n"
(out / "gpu_check.md").write_text(text)
(out / "gpu_check.json").write_text(json.dumps(res, indent=2))
print(text)
EOF
rm -rf "$WORK"
