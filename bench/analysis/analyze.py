#!/usr/bin/env python3
"""The paper's analyses from msrnn's records (bench/analysis/run.sh drives it).

  analyze.py retention TRACE OUT        which positions stay at each step (heat maps)
  analyze.py lifetime TRACE TOKENIZER OUT  steps kept by token and class; BOS kept, per layer
  analyze.py ages TRACE OUT             ages of the states kept at the end of the stream
  analyze.py lengths OUT LIMIT FULL_LIMIT JSONL...   story lengths per policy and capacity
  analyze.py stream OUT TITLE PER_TOKEN...   perplexity of each window of 256 along a stream

TRACE is msrnn-perplexity --stream --trace (one sequence), PER_TOKEN its --per-token, JSONL
msrnn-generate --prompts output named POLICY-CAPACITY.jsonl. Each writes CSV files and PNGs (with
gnuplot) under OUT and prints its main figures. Standard library only.
"""
import collections
import csv
import json
import math
import os
import statistics
import string
import struct
import subprocess
import sys

TRACE_COLUMNS = ["policy", "capacity", "layer", "kv_head", "position", "token", "evicted_at",
                 "positions", "kv_type", "sequence"]
PER_TOKEN_COLUMNS = ["policy", "capacity", "positions", "kv_type", "index", "token", "nll"]
BOS, NEWLINE = 1, 13  # tok512: <s>, <0x0A>


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_csv(path, columns):
    """Rows of a tools' CSV file as dicts, after checking its header."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != columns:
                fail(f"{path}: header {header} is not {','.join(columns)}")
            for number, row in enumerate(reader, start=2):
                if len(row) != len(columns):
                    fail(f"{path}:{number}: {len(row)} fields, not {len(columns)}")
                yield dict(zip(columns, row))
    except OSError as e:
        fail(f"{path}: {e.strerror}")


class State:
    """One state of one layer and KV head, kept after steps [position, end): `end` is the step
    that evicted it (so a window of C keeps every state C steps; TOVA evicting the new token
    itself keeps it 0), or the stream's length for a state still kept (`censored`)."""
    __slots__ = ("layer", "head", "position", "token", "end", "censored")

    def __init__(self, layer, head, position, token, end, censored):
        self.layer, self.head, self.position = layer, head, position
        self.token, self.end, self.censored = token, end, censored


def read_trace(path):
    """{policy: (states, steps)} of a one-sequence trace; steps = the tokens of the stream. One
    run per policy: a trace of several capacities, positions modes or precisions is refused."""
    raw = collections.defaultdict(list)
    settings = {}
    for r in read_csv(path, TRACE_COLUMNS):
        if r["sequence"] != "0":
            fail(f"{path}: more than one sequence (run msrnn-perplexity with --stream)")
        setting = (r["capacity"], r["positions"], r["kv_type"])
        if settings.setdefault(r["policy"], setting) != setting:
            fail(f"{path}: {r['policy']} runs at more than one capacity, positions mode or "
                 "kv_type; give one run per policy")
        try:
            evicted = int(r["evicted_at"]) if r["evicted_at"] else None
            raw[r["policy"]].append((int(r["layer"]), int(r["kv_head"]), int(r["position"]),
                                     int(r["token"]), evicted))
        except ValueError:
            fail(f"{path}: a field that is not a number in {r}")
    result = {}
    for policy, rows in raw.items():
        steps = max(p for _, _, p, _, _ in rows) + 1
        result[policy] = ([State(l, g, p, t, e if e is not None else steps, e is None)
                           for l, g, p, t, e in rows], steps)
    if not result:
        fail(f"{path}: no rows")
    return result


def gnuplot(script, png):
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"gnuplot failed for {png}: {e}")


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def retention(trace, out):
    """Heat maps: the share of KV heads keeping position y at step x; layer 0, the last layer
    and all layers, in bins of `f` x `f` (positions, steps)."""
    for policy, (states, steps) in read_trace(trace).items():
        layers = max(s.layer for s in states) + 1
        heads = max(s.head for s in states) + 1
        f = max(1, math.ceil(steps / 256))
        bins = math.ceil(steps / f)
        panels = {"layer 0": [0], f"layer {layers - 1}": [layers - 1], "all layers": range(layers)}
        kept = {name: [[0.0] * bins for _ in range(bins)] for name in panels}
        for s in states:
            for sb in range(s.position // f, (s.end - 1) // f + 1):
                overlap = min(s.end, (sb + 1) * f) - max(s.position, sb * f)
                for name, chosen in panels.items():
                    if s.layer in chosen:
                        kept[name][s.position // f][sb] += overlap / (heads * len(chosen))
        rows = []
        for pb in range(bins):
            for sb in range(bins):
                # cells (position, step) of the bin with position <= step < steps
                cells = sum(max(0, min(steps, (sb + 1) * f) - max(p, sb * f))
                            for p in range(pb * f, min(steps, (pb + 1) * f)))
                shares = [kept[n][pb][sb] / cells if cells else float("nan") for n in panels]
                rows.append([sb * f, pb * f] + [round(x, 4) for x in shares])
        write_csv(os.path.join(out, f"retention_{policy}.csv"), ["step", "position"] + list(panels),
                  rows)
        data = os.path.join(out, f"retention_{policy}.dat")  # gnuplot's grid: a block a position
        with open(data, "w") as f:
            for i, row in enumerate(rows):
                if i and i % bins == 0:
                    f.write("\n")
                f.write(" ".join("NaN" if isinstance(x, float) and math.isnan(x) else str(x)
                                 for x in row) + "\n")
        png = os.path.join(out, f"retention_{policy}.png")
        script = [f"set terminal pngcairo size 1500,520 noenhanced; set output '{png}'",
                  f"set multiplot layout 1,3 title '{policy}: share of KV heads keeping a "
                  f"position (y) at a step (x), C={capacity_of(trace, policy)}'",
                  "set palette defined (0 'white', 0.5 'orange', 1 'dark-red'); set cbrange [0:1]",
                  "set xlabel 'step'; set ylabel 'position'",
                  f"set xrange [0:{steps}]; set yrange [0:{steps}]"]
        for i, name in enumerate(panels):
            script.append(f"set title '{name}'; plot '{data}' using 1:2:{i + 3} "
                          "with image notitle")
        gnuplot("\n".join(script) + "\nunset multiplot\n", png)
        bos = sum(s.end for s in states if s.position == 0) / (layers * heads * steps)
        print(f"retention {policy}: {steps} steps; position 0 kept {bos:.1%} of steps (all heads)")


_capacities = {}


def capacity_of(trace, policy):
    """The capacity a trace's rows give for `policy` (the first row's)."""
    if (trace, policy) not in _capacities:
        for r in read_csv(trace, TRACE_COLUMNS):
            _capacities.setdefault((trace, r["policy"]), r["capacity"])
    return _capacities[(trace, policy)]


def read_pieces(path):
    """The pieces of a llama2.c tokenizer file (tok512.bin), as bytes."""
    try:
        data = open(path, "rb").read()
        offset, pieces = 4, []
        while offset < len(data):
            _, length = struct.unpack_from("<fi", data, offset)
            pieces.append(data[offset + 8:offset + 8 + length])
            offset += 8 + length
    except (OSError, struct.error) as e:
        fail(f"{path}: not a llama2.c tokenizer ({e})")
    return pieces


def token_class(token, piece):
    if token == BOS:
        return "BOS"
    if token == NEWLINE:
        return "newline"
    text = piece.decode("utf-8", "replace")
    stripped = text.lstrip(" ")
    if stripped and all(c in string.punctuation for c in stripped):
        return "punctuation"
    if text.startswith(" "):
        return "word-initial"
    return "rest"


def lifetime(trace, tokenizer, out):
    """Mean steps kept per token id and class (a state still kept at the end counts to the end:
    `censored`), and the share of steps position 0 (BOS) is kept, per policy and layer."""
    pieces = read_pieces(tokenizer)
    by_token, by_class, bos_rows, class_rows = [], [], [], []
    classes = ["BOS", "newline", "punctuation", "word-initial", "rest"]
    for policy, (states, steps) in read_trace(trace).items():
        token_sum = collections.defaultdict(lambda: [0, 0, 0])  # steps kept, states, censored
        class_sum = collections.defaultdict(lambda: [0, 0, 0])
        for s in states:
            for table, key in ((token_sum, s.token), (class_sum, token_class(s.token, pieces[s.token]))):
                table[key][0] += s.end - s.position
                table[key][1] += 1
                table[key][2] += s.censored
        for token, (total, count, censored) in sorted(token_sum.items()):
            by_token.append([policy, token, pieces[token].decode("utf-8", "replace"),
                             token_class(token, pieces[token]), count, round(total / count, 2),
                             censored])
        line = []
        for c in classes:
            total, count, censored = class_sum.get(c, [0, 0, 0])
            mean = total / count if count else float("nan")
            class_rows.append([policy, c, count, round(mean, 2), censored])
            line.append(f"{c} {mean:.1f}")
        layers = sorted({s.layer for s in states})
        shares = []
        for layer in layers:
            zero = [s for s in states if s.position == 0 and s.layer == layer]
            share = sum(s.end for s in zero) / (len(zero) * steps)
            bos_rows.append([policy, layer, round(share, 4)])
            shares.append(f"{share:.0%}")
        print(f"lifetime {policy} ({steps} steps, mean steps kept): {', '.join(line)}; "
              f"BOS kept by layer: {' '.join(shares)}")
    write_csv(os.path.join(out, "lifetime_by_token.csv"),
              ["policy", "token", "piece", "class", "states", "mean_lifetime", "censored"], by_token)
    data = os.path.join(out, "lifetime_by_class.csv")
    write_csv(data, ["policy", "class", "states", "mean_lifetime", "censored"], class_rows)
    write_csv(os.path.join(out, "bos_kept.csv"), ["policy", "layer", "share"], bos_rows)
    policies = sorted({r[0] for r in class_rows})
    png = os.path.join(out, "lifetime_by_class.png")
    table = os.path.join(out, "lifetime_by_class.dat")
    with open(table, "w") as f:
        f.write("class " + " ".join(policies) + "\n")
        for c in classes:
            means = {r[0]: r[3] for r in class_rows if r[1] == c}
            f.write(c + " " + " ".join(str(means[p]) for p in policies) + "\n")
    gnuplot(f"set terminal pngcairo size 1000,560 noenhanced; set output '{png}'\n"
            "set style data histograms; set style histogram clustered; set style fill solid 0.8\n"
            "set logscale y; set ylabel 'mean steps kept'; set key top left\n"
            "set title 'steps a state is kept, by token class'\n"
            f"plot for [i=2:{len(policies) + 1}] '{table}' using i:xtic(1) title columnhead\n", png)


def ages(trace, out):
    """Ages (steps since its token) of the states kept at the end, in log2 bins, per policy."""
    rows, lines = [], []
    for policy, (states, steps) in read_trace(trace).items():
        kept = [steps - 1 - s.position for s in states if s.censored]
        counts = collections.Counter(0 if a == 0 else a.bit_length() for a in kept)
        for b in range(max(counts) + 1):
            low, high = (0, 0) if b == 0 else (1 << (b - 1), (1 << b) - 1)
            rows.append([policy, low, high, counts.get(b, 0), round(counts.get(b, 0) / len(kept), 4)])
        older = sum(a >= 1024 for a in kept) / len(kept)
        lines.append(f"ages {policy} ({steps} steps): median {statistics.median(kept):.0f}, "
                     f"share >= 1024 steps old {older:.1%}, oldest {max(kept)}")
    data = os.path.join(out, "ages.csv")
    write_csv(data, ["policy", "age_from", "age_to", "states", "share"], rows)
    png = os.path.join(out, "ages.png")
    policies = sorted({r[0] for r in rows})
    plots = ", ".join(f"'{data}' using ($1 eq '{p}' ? $2 + 1 : 1/0):5 with linespoints title '{p}'"
                      for p in policies)
    gnuplot(f"set terminal pngcairo size 900,560 noenhanced; set output '{png}'\n"
            "set datafile separator ','; set logscale x 2; set xlabel 'age + 1 (steps)'\n"
            "set ylabel 'share of the kept states'; set title 'ages of the states kept at the end'\n"
            f"plot {plots.replace('$1 eq', 'strcol(1) eq')}\n", png)
    print("\n".join(lines))


def lengths(out, limit, full_limit, files):
    """Mean and median story length (tokens until BOS) per policy and capacity; a story that
    reaches its setting's token limit is counted at the limit (at_limit says how many)."""
    rows = []
    for path in files:
        name = os.path.basename(path).rsplit(".", 1)[0]
        policy, _, capacity = name.partition("-")
        cap_limit = full_limit if policy == "full" else limit
        try:
            stories = [json.loads(line)["tokens"] for line in open(path) if line.strip()]
        except (OSError, ValueError, KeyError) as e:
            fail(f"{path}: not msrnn-generate --prompts output ({e})")
        if not stories:
            fail(f"{path}: no stories")
        at_limit = sum(t >= cap_limit for t in stories)
        rows.append([policy, int(capacity), len(stories), round(statistics.mean(stories), 1),
                     statistics.median(stories), at_limit])
    rows.sort(key=lambda r: (r[0] != "full", r[0], r[1]))
    data = os.path.join(out, "lengths.csv")
    write_csv(data, ["policy", "capacity", "stories", "mean", "median", "at_limit"], rows)
    for r in rows:
        print(f"lengths {r[0]} C={r[1]}: {r[2]} stories, mean {r[3]}, median {r[4]}, "
              f"at the limit {r[5]}")
    full = [r for r in rows if r[0] == "full"]
    png = os.path.join(out, "lengths.png")
    policies = sorted({r[0] for r in rows} - {"full"})
    plots = [f"'{data}' using (strcol(1) eq '{p}' ? $2 : 1/0):4 with linespoints title '{p}'"
             for p in policies]
    if full:
        plots.append(f"{full[0][3]} with lines dashtype 2 lc rgb 'black' title 'full (mean)'")
    gnuplot(f"set terminal pngcairo size 900,560 noenhanced; set output '{png}'\n"
            "set datafile separator ','; set logscale x 2; set xlabel 'capacity'\n"
            "set ylabel 'mean story length (tokens)'; set key top right\n"
            f"set title 'stories from BOS at temperature 1 (no top-p), until BOS or {limit} tokens'\n"
            f"plot {', '.join(plots)}\n", png)


def stream(out, title, files, window=256):
    """Perplexity of each window of `window` predictions along a stream, per policy."""
    rows, summary = [], []
    for path in files:
        series = collections.defaultdict(list)
        settings = {}
        for r in read_csv(path, PER_TOKEN_COLUMNS):
            setting = (r["capacity"], r["kv_type"])
            if settings.setdefault((r["policy"], r["positions"]), setting) != setting:
                fail(f"{path}: {r['policy']} {r['positions']} runs at more than one capacity or "
                     "kv_type; give one run per policy and positions mode")
            try:
                series[(r["policy"], r["capacity"], r["positions"])].append(float(r["nll"]))
            except ValueError:
                fail(f"{path}: nll '{r['nll']}' is not a number")
        for (policy, capacity, positions), nll in series.items():
            windows = []
            for start in range(0, len(nll) - window + 1, window):
                ppl = math.exp(sum(nll[start:start + window]) / window)
                windows.append(ppl)
                rows.append([policy, capacity, positions, start, round(ppl, 4)])
            if windows:
                summary.append(f"{policy} {positions}: windows {len(windows)}, first "
                               f"{windows[0]:.2f}, last {windows[-1]:.2f}, max {max(windows):.2f}")
    slug = title.replace(" ", "_").replace("/", "_")
    data = os.path.join(out, f"stream_{slug}.csv")
    write_csv(data, ["policy", "capacity", "positions", "start", "ppl"], rows)
    png = os.path.join(out, f"stream_{slug}.png")
    policies = sorted({r[0] for r in rows}, key=lambda p: (p != "full", p))
    script = [f"set terminal pngcairo size {1500 if len(set(r[2] for r in rows)) > 1 else 900},560 "
              f"noenhanced; set output '{png}'",
              "set datafile separator ','; set logscale y; set key top left",
              "set xlabel 'token index along the stream'",
              f"set ylabel 'perplexity of the next {window} tokens'",
              f"set multiplot layout 1,2 title '{title}, C = {next((r[1] for r in rows if r[0] != 'full'), '')}'"]
    modes = [m for m in ("absolute", "in_cache") if any(r[2] == m for r in rows)]
    if not modes:
        fail(f"{title}: no window of {window} predictions in {', '.join(files)}")
    script[-1] = script[-1].replace("layout 1,2", f"layout 1,{len(modes)}")
    for mode in modes:
        plots = ", ".join(
            f"'{data}' using ((strcol(1) eq '{p}' && strcol(3) eq '{mode}') ? $4 : 1/0):5 "
            f"with lines title '{p}'" + (" lw 2 lc rgb 'black'" if p == "full" else "")
            for p in policies)
        script.append(f"set title '{mode} positions'; plot {plots}")
    gnuplot("\n".join(script) + "\nunset multiplot\n", png)
    print(f"stream {title}: " + "; ".join(summary))


def main(argv):
    if len(argv) < 3:
        fail(__doc__)
    command, args = argv[1], argv[2:]
    out = args[-1] if command in ("retention", "lifetime", "ages") else args[0]
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        fail(f"{out}: cannot make the output folder ({e.strerror})")
    if command == "retention" and len(args) == 2:
        retention(*args)
    elif command == "lifetime" and len(args) == 3:
        lifetime(*args)
    elif command == "ages" and len(args) == 2:
        ages(*args)
    elif command == "lengths" and len(args) >= 4:
        lengths(args[0], int(args[1]), int(args[2]), args[3:])
    elif command == "stream" and len(args) >= 3:
        stream(args[0], args[1], args[2:])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
