#!/usr/bin/env bash
# The paper's analyses on our models (bench/README.md, "Inside the multi-state"): traces and
# per-token losses from msrnn-perplexity --stream, stories from msrnn-generate --prompts, turned
# into CSV and PNG by analyze.py.
#
#   bench/analysis/run.sh [--smoke] [--bin DIR] [--out DIR]
#     --bin  where msrnn-perplexity and msrnn-generate are (default build/bench/examples, else
#            build/dev/examples)
#     --out  the results (default build/analysis); --smoke: a tiny run of every analysis (CI)
# Takes about 6 minutes on 2 cores (the smoke run about 5 seconds).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/bench/analysis"
smoke=0
bin=""
out="$root/build/analysis"
while (($#)); do
  case "$1" in
    --smoke) smoke=1 ;;
    --bin) bin="${2:?--bin needs a folder}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    *) echo "error: unknown argument '$1' (use --smoke, --bin DIR, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$bin" ]; then
  bin="$root/build/bench/examples"
  [ -x "$bin/msrnn-perplexity" ] || bin="$root/build/dev/examples"
fi
models="${MSRNN_MODEL_DIR:-$root/../shared/models}"
texts="${MSRNN_TEXT_DIR:-$root/../shared/texts}"
stories="$texts/TinyStories-valid.head30k.txt"
book="$texts/emma.txt"
for f in "$bin/msrnn-perplexity" "$bin/msrnn-generate" "$models/stories260K.bin" \
  "$models/austen2.5M.bin" "$models/tok512.bin" "$stories" "$book"; do
  [ -e "$f" ] || { echo "error: $f is missing" >&2; exit 2; }
done
for tool in python3 gnuplot; do
  command -v "$tool" >/dev/null ||
    { echo "error: $tool is not installed (scripts/setup.sh)" >&2; exit 2; }
done

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
perplexity() { "$bin/msrnn-perplexity" --tokenizer "$models/tok512.bin" "$@" > /dev/null; }
prefix() { head -c "$2" "$1" > "$3"; }  # the first $2 bytes
bounded=window,sink,h2o,tova,tova_sink

# a. Which positions stay, step by step: a stream of ~2k tokens (4x the context), C = 64.
if [ "$smoke" = 1 ]; then size=700; c=16; else size=4500; c=64; fi
prefix "$stories" "$size" "$work/short.txt"
perplexity --model "$models/stories260K.bin" --text "$work/short.txt" --stream --policy "$bounded" \
  --capacity "$c" --trace "$work/retention.csv"
python3 "$here/analyze.py" retention "$work/retention.csv" "$out"

# b, c. Lifetimes by token and the ages of the states kept at the end: the whole TinyStories
# sample as one stream (~15.5k tokens, 30x the context), C = 64.
if [ "$smoke" = 1 ]; then
  prefix "$stories" 2000 "$work/long.txt"
else
  cp "$stories" "$work/long.txt"
fi
perplexity --model "$models/stories260K.bin" --text "$work/long.txt" --stream --policy "$bounded" \
  --capacity "$c" --trace "$work/long_trace.csv"
python3 "$here/analyze.py" lifetime "$work/long_trace.csv" "$models/tok512.bin" "$out"
python3 "$here/analyze.py" ages "$work/long_trace.csv" "$out"

# d. Story lengths: stories260K from BOS at temperature 1 (no top-p) until BOS, or 2048 tokens
# (full stops at its context, 512), 200 stories per setting, each with its own seed.
if [ "$smoke" = 1 ]; then
  n=8; capacities=(16 32); steps=300
else
  n=200; capacities=(16 32 64 128 256); steps=2048
fi
for ((i = 0; i < n; i++)); do echo; done > "$work/bos.txt"  # empty lines: BOS only
generate() {  # policy capacity
  "$bin/msrnn-generate" --model "$models/stories260K.bin" --tokenizer "$models/tok512.bin" \
    --prompts "$work/bos.txt" --batch 64 --temperature 1 --topp 1 --seed 2024 --steps "$steps" \
    --policy "$1" --capacity "$2" > "$work/stories/$1-$2.jsonl" 2> /dev/null
}
mkdir -p "$work/stories"
generate full 512
for policy in ${bounded//,/ }; do
  for capacity in "${capacities[@]}"; do generate "$policy" "$capacity"; done
done
python3 "$here/analyze.py" lengths "$out" "$steps" "$((steps < 512 ? steps : 512))" "$work"/stories/*.jsonl

# e. StreamingLLM's figure: perplexity of each 256 tokens along a stream 8x the context or more,
# both models, two texts, absolute and in_cache positions, C = 256; full to twice its context.
if [ "$smoke" = 1 ]; then
  runs=("stories260K TinyStories $stories 2400")
else
  runs=("stories260K TinyStories $stories 0" "stories260K emma $book 16000"
        "austen2.5M TinyStories $stories 0" "austen2.5M emma $book 32000")
fi
for run in "${runs[@]}"; do
  read -r model name text bytes <<< "$run"
  if [ "$bytes" = 0 ]; then
    cp "$text" "$work/stream.txt"
  else
    prefix "$text" "$bytes" "$work/stream.txt"
  fi
  for positions in absolute in_cache; do
    perplexity --model "$models/$model.bin" --text "$work/stream.txt" --stream \
      --policy "full,$bounded" --capacity 256 --positions "$positions" \
      --per-token "$work/$model-$name-$positions.csv" 2> /dev/null
  done
  python3 "$here/analyze.py" stream "$out" "$model on $name" \
    "$work/$model-$name-absolute.csv" "$work/$model-$name-in_cache.csv"
done
echo "CSV and PNG files in $out"
