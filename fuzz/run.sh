#!/usr/bin/env bash
# Runs idgate's fuzz targets (cargo fuzz, nightly; see README "Fuzzing").
#
#   fuzz/run.sh            each target over its seeds and saved corpus once (what CI runs)
#   fuzz/run.sh 300        each target for 300 s, adding what it finds to the corpus
#   fuzz/run.sh 300 path   only the `path` target
#
# The corpus lives outside the checkout ($FUZZ_CORPUS, default ~/.cache/idgate/fuzz-corpus);
# fuzz/seeds/<target> holds the hand-picked starting inputs. A failing input is written to
# fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-0}
shift || true
corpus_root=${FUZZ_CORPUS:-$HOME/.cache/idgate/fuzz-corpus}
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/idgate/fuzz-target}
fuzz=(cargo +nightly fuzz)

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <("${fuzz[@]}" list)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  corpus=$corpus_root/$target
  mkdir -p "$corpus"
  inputs=("$corpus")
  [[ -d seeds/$target ]] && inputs+=("seeds/$target")
  if ((seconds > 0)); then
    limits=(-max_total_time="$seconds") what="${seconds} s"
  else
    limits=(-runs=0) what="seeds and corpus once"
  fi
  echo "== fuzz target $target: $what"
  if ! "${fuzz[@]}" run --target-dir "$target_dir" "$target" "${inputs[@]}" -- \
    "${limits[@]}" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -v '^\s*Compiling' "$log" | tail -60
    echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | tr '\n' ' '
  echo
done
