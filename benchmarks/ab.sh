#!/usr/bin/env bash
# ab.sh - two builds of pyonvm side by side: A and B alternated, medians and ratios.
#
#   benchmarks/ab.sh [-n REPEATS] [-s SECONDS] [-o OUT.jsonl] A B [SCENARIO ...]
#
# A and B are commits (anything `git rev-parse` takes: main, HEAD~1, 58e3f67) or
# directories holding a source tree (`.` for the working tree as it is).  A commit
# is checked out once into a detached worktree under ${AB_DIR:-/tmp/onvm-ab}, and
# each tree's native core is built in place, so both run from the same Python
# environment (this repository's .venv, `make` makes it) with their own
# `src` first on PYTHONPATH.  Each round runs every scenario (default: loop
# chain3) with A then B, the next round B then A, so that neither build always
# goes first on a machine whose load drifts.  Prints each run, then per
# scenario the medians for A and for B and the median of the per-round ratios
# B/A of two figures: Mpps as the benchmark reports it, and packets per CPU
# second of every process of the run (start-up included), which holds still
# when other work on the machine takes CPU time from one run and not another.
#
# Example (what the threat-model checks cost the closed loops):
#   benchmarks/ab.sh -n 6 -s 4 58e3f67 main loop chain3
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
repeats=4 seconds=4 out=""
while getopts "n:s:o:h" opt; do
    case $opt in
    n) repeats=$OPTARG ;;
    s) seconds=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -lt 2 ]; then
    echo "ab.sh: expected two builds to compare (commits or source directories), got $#" >&2
    exit 2
fi
case $repeats in '' | *[!0-9]* | 0) echo "ab.sh: -n wants a positive number of rounds, got '$repeats'" >&2; exit 2 ;; esac
a=$1 b=$2
shift 2
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(loop chain3)
py=${AB_PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || { echo "ab.sh: no Python at $py (run make first, or set AB_PYTHON)" >&2; exit 2; }
root=${AB_DIR:-/tmp/onvm-ab}
mkdir -p "$root"

# The source tree of a build: a directory as given, a commit in a worktree of its own.
tree() {
    if [ -d "$1/src/onvm" ]; then
        (cd "$1" && pwd)
        return
    fi
    local sha
    sha=$(git -C "$here" rev-parse --verify --quiet "$1^{commit}") ||
        { echo "ab.sh: '$1' is neither a source directory nor a commit" >&2; return 1; }
    local dir=$root/${sha:0:12}
    [ -d "$dir/src/onvm" ] || git -C "$here" worktree add --detach "$dir" "$sha" >/dev/null 2>&1 ||
        { echo "ab.sh: could not check out $sha into $dir" >&2; return 1; }
    echo "$dir"
}

build() {
    echo "building $1" >&2
    (cd "$1" && "$py" setup.py -q build_ext --inplace >/dev/null 2>"$root/build.log") ||
        { echo "ab.sh: the build of $1 failed:" >&2; tail -20 "$root/build.log" >&2; return 1; }
}

ta=$(tree "$a")
tb=$(tree "$b")
build "$ta"
[ "$tb" = "$ta" ] || build "$tb"
echo "A = $a ($ta, $(git -C "$ta" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "B = $b ($tb, $(git -C "$tb" rev-parse --short HEAD 2>/dev/null || echo '?'))"
[ -z "$out" ] || : >"$out"

results=$(mktemp "$root/results.XXXXXX")
trap 'rm -f "$results"' EXIT

# run SIDE TREE SCENARIO ROUND: one benchmark, its JSON line appended to $results.
run() {
    local line
    # The bench's JSON line, with the CPU seconds that it and every process it started used
    # (they are all its descendants, reaped by it): packets per CPU second do not depend on
    # how much of the machine the run got, which other users of a shared machine decide.
    if ! line=$(cd "$2" && PYTHONPATH=$2/src "$py" -c '
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True, check=True).stdout
r = json.loads(out.strip().splitlines()[-1])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
r["cpu_seconds"] = round(u.ru_utime + u.ru_stime, 3)
print(json.dumps(r))' "$py" -m onvm.cli.main bench "$3" --seconds "$seconds" --json 2>>"$root/bench.log"); then
        echo "ab.sh: onvm bench $3 failed in $2 (see $root/bench.log)" >&2
        return 1
    fi
    printf '%s\t%s\t%s\t%s\n' "$1" "$3" "$4" "$line" >>"$results"
    [ -z "$out" ] || printf '{"side": "%s", "scenario": "%s", "round": %s, "result": %s}\n' "$1" "$3" "$4" "$line" >>"$out"
    printf '%-2s %-8s round %-3s %s\n' "$1" "$3" "$4" "$line"
}

for ((i = 1; i <= repeats; i++)); do
    for sc in "${scenarios[@]}"; do
        if ((i % 2)); then
            run A "$ta" "$sc" "$i"
            run B "$tb" "$sc" "$i"
        else
            run B "$tb" "$sc" "$i"
            run A "$ta" "$sc" "$i"
        fi
    done
done

"$py" - "$results" <<'EOF'
import json, statistics, sys
runs = {}
for row in open(sys.argv[1]):
    side, sc, rnd, line = row.rstrip("\n").split("\t", 3)
    r = json.loads(line)
    # None: the scenario reports no packet count (classify measures several windows)
    per_cpu = r["packets"] / r["cpu_seconds"] / 1e6 if r.get("cpu_seconds") and "packets" in r else None
    runs.setdefault(sc, {}).setdefault(int(rnd), {})[side] = (float(r.get("mpps", 0.0)), per_cpu)
for k, what in ((0, "Mpps"), (1, "M packets per CPU second (all processes of the run)")):
    print(f"\n{what}\n{'scenario':10} {'A median':>9} {'B median':>9} {'B/A (median of rounds)':>24}  ratios")
    for sc, rounds in runs.items():
        pairs = [(v["A"][k], v["B"][k]) for v in rounds.values() if "A" in v and "B" in v]
        if not pairs or any(x is None for pair in pairs for x in pair):
            print(f"{sc:10} (no packet count in its figures)")
            continue
        ratios = [b / a for a, b in pairs if a]
        med = statistics.median(ratios) if ratios else float("nan")
        print(f"{sc:10} {statistics.median(a for a, _ in pairs):9.3f} {statistics.median(b for _, b in pairs):9.3f} "
              f"{med:24.3f}  " + " ".join(f"{x:.3f}" for x in ratios))
EOF
