#!/usr/bin/env bash
# What the records cost msrnn-perplexity: wall time with --trace and with --per-token against
# none, in interleaved rounds (a pair's ratio, the median of the rounds), and the peak memory of
# a bounded policy along a stream 1/10 as long as a whole book and the whole book (flat memory).
#
#   bench/trace_cost.sh [--smoke] [--bin DIR]   (DIR: where msrnn-perplexity is; default
#                                                build/bench/examples, else build/dev/examples)
# Prints a table; bench/README.md ("Traces") keeps the figures.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
smoke=0
bin=""
while (($#)); do
  case "$1" in
    --smoke) smoke=1 ;;
    --bin) bin="${2:?--bin needs a folder}"; shift ;;
    *) echo "error: unknown argument '$1' (use --smoke, --bin DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$bin" ]; then
  bin="$root/build/bench/examples"
  [ -x "$bin/msrnn-perplexity" ] || bin="$root/build/dev/examples"
fi
tool="$bin/msrnn-perplexity"
models="${MSRNN_MODEL_DIR:-$root/../shared/models}"
book="$root/../shared/texts/emma.txt"
for f in "$tool" "$models/stories260K.bin" "$models/tok512.bin" "$book"; do
  [ -e "$f" ] || { echo "error: $f is missing" >&2; exit 2; }
done
command -v /usr/bin/time >/dev/null || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
files=(--model "$models/stories260K.bin" --tokenizer "$models/tok512.bin")
if [ "$smoke" = 1 ]; then rounds=1; bytes=20000; else rounds=7; bytes=400000; fi
head -c "$bytes" "$book" | sed '$d' > "$work/text.txt"  # whole lines
run=(--text "$work/text.txt" --policy tova --capacity 64)

seconds() {  # wall seconds of one run of the tool with the given extra flags
  /usr/bin/time -f %e -o "$work/time" "$tool" "${files[@]}" "${run[@]}" "$@" > /dev/null
  cat "$work/time"
}

echo "msrnn-perplexity, stories260K, tova C=64, $(wc -c < "$work/text.txt") bytes of emma.txt, $rounds rounds"
plain=(); trace=(); per_token=()
for ((r = 0; r < rounds; r++)); do
  # the order turns each round, so a drift of the machine does not favour one
  if ((r % 2 == 0)); then
    plain+=("$(seconds)"); trace+=("$(seconds --trace "$work/trace.csv")")
    per_token+=("$(seconds --per-token "$work/losses.csv")")
  else
    per_token+=("$(seconds --per-token "$work/losses.csv")")
    trace+=("$(seconds --trace "$work/trace.csv")"); plain+=("$(seconds)")
  fi
done
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }  # of stdin's lines
each() { printf '%s\n' "$@"; }
ratios() {  # each round's ratio of $1-array to plain
  local -n num=$1
  for ((r = 0; r < rounds; r++)); do awk -v a="${num[r]}" -v b="${plain[r]}" 'BEGIN {print a / b}'; done
}
printf '%-12s %10s %14s %s\n' "records" "median s" "ratio (median)" "rows"
printf '%-12s %10s %14s\n' "none" "$(each "${plain[@]}" | median)" "1"
printf '%-12s %10s %14s %s\n' "--trace" "$(each "${trace[@]}" | median)" \
  "$(ratios trace | median)" "$(($(wc -l < "$work/trace.csv") - 1))"
printf '%-12s %10s %14s %s\n' "--per-token" "$(each "${per_token[@]}" | median)" \
  "$(ratios per_token | median)" "$(($(wc -l < "$work/losses.csv") - 1))"

# Flat memory: peak RSS along a stream a tenth of the book long and along the whole book.
full=$(wc -c < "$book")
if [ "$smoke" = 1 ]; then tenth=$((full / 1000)); whole=$((full / 100)); else tenth=$((full / 10)); whole=$full; fi
head -c "$tenth" "$book" | sed '$d' > "$work/tenth.txt"
head -c "$whole" "$book" | sed '$d' > "$work/whole.txt"
peak() {
  /usr/bin/time -f %M -o "$work/rss" "$tool" "${files[@]}" --text "$1" --stream --policy tova \
    --capacity 256 --per-token "$work/stream.csv" > "$work/out.txt"
  echo "$(cat "$work/rss") KB for $(awk 'NR == 2 {print $3}' "$work/out.txt") tokens"
}
echo "--stream tova C=256 with --per-token, peak RSS: $(peak "$work/tenth.txt"); $(peak "$work/whole.txt")"
