#!/bin/bash
# Run fws side by side with the peers of the shared harness, in one interleaved run.
#
#   benchmarks/run.sh [SERVERS] [SCENARIOS] [REPS]
#   benchmarks/run.sh fws,fws-redis,ab-prepared,node-ws fanout-1000-64 3     (the default)
#   benchmarks/run.sh profile SERVER SCENARIO [SECONDS]     py-spy profile -> benchmarks/profiles/
#   benchmarks/run.sh profile SERVER connect [ROUNDS]       (handshakes: benchmarks/profile_connect.py)
#   benchmarks/run.sh cpu SERVERS [RECEIVERS] [MESSAGES] [REPS]
#                         server user/system CPU per delivery of a lone broadcast
#                         (benchmarks/cpu_per_delivery.py; defaults 5000 200 3)
#   benchmarks/run.sh cpu-echo SERVERS [CLIENTS] [ROUNDS] [REPS]
#                         server user/system CPU per echo round trip
#                         (benchmarks/cpu_per_echo.py; defaults 100 2000 5)
#
# The harness (../shared/bench, or $FWS_BENCH_HARNESS) is copied to $FWS_BENCH_DIR
# (default /tmp/fws-bench) so that a read-only checkout of it works; the fws
# entries of benchmarks/servers.txt are added to its servers.txt. The report
# (ratios need one run: compare rows of the same TAG) goes to
# benchmarks/results/TAG.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
harness=${FWS_BENCH_HARNESS:-$root/../shared/bench}
work=${FWS_BENCH_DIR:-/tmp/fws-bench}
python=${FWS_PYTHON:-$(command -v python3)}
mode=run
if [ "${1:-}" = profile ] || [ "${1:-}" = cpu ] || [ "${1:-}" = cpu-echo ]; then
    mode=$1
    shift
fi
servers=${1:-fws,fws-redis,ab-prepared,node-ws}
scenarios=${2:-fanout-1000-64}
reps=${3:-3}
tag=${TAG:-fws-$(date +%Y%m%d-%H%M%S)}

"$python" -c 'import fws' 2>/dev/null || { echo "run.sh: fws is not installed in $python" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "run.sh: redis-server is needed for fws-redis" >&2; exit 2; }
mkdir -p "$work"
cp -r "$harness"/. "$work"/
(cd "$work" && ./setup.sh >/dev/null)
grep -v '^fws' "$work/servers.txt" > "$work/servers.txt.new" || true
sed -e "s|@HERE@|$here|g" -e "s|@PYTHON@|$python|g" "$here/servers.txt" | grep -v '^#' >> "$work/servers.txt.new"
mv "$work/servers.txt.new" "$work/servers.txt"
if [ "$mode" = profile ]; then
    mkdir -p "$here/profiles" "$work/results/logs"
    # Our own profilers, not the harness's tools/profile.py: that one records the last
    # process of a server's tree (redis-server for fws-redis) and has no connect mode.
    if [ "$scenarios" = connect ]; then
        (cd "$work" && python3 "$here/profile_connect.py" "$work" "$servers" "${3:-5}")
    else
        (cd "$work" && python3 "$here/profile_server.py" "$work" "$servers" "$scenarios" "${3:-4}")
    fi | tee "$here/profiles/$servers-$scenarios.txt"
    exit 0
fi
if [ "$mode" = cpu ] || [ "$mode" = cpu-echo ]; then
    mkdir -p "$here/results"
    if [ "$mode" = cpu ]; then
        script=cpu_per_delivery.py args=("${2:-5000}" "${3:-200}" "${4:-3}")
    else
        script=cpu_per_echo.py args=("${2:-100}" "${3:-2000}" "${4:-5}")
    fi
    {
        echo "# $tag"
        echo
        echo "Machine: $(nproc) cores, $(uname -sr), $("$python" --version 2>&1); $(date -u +%Y-%m-%d)."
        echo "Command: benchmarks/run.sh $mode $servers ${args[*]}"
        echo
        (cd "$work" && python3 "$here/$script" "$work" "$servers" "${args[@]}")
    } | tee "$here/results/$tag.md"
    exit 0
fi
(cd "$work" && TAG="$tag" ./run.sh "$servers" "$scenarios" "$reps")
mkdir -p "$here/results"
grep "\"tag\": \"$tag\"" "$work/results/raw.jsonl" > "$here/results/$tag.jsonl" || true
{
    echo "# $tag"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr), $("$python" --version 2>&1); $(date -u +%Y-%m-%d)."
    echo "Command: benchmarks/run.sh $servers $scenarios $reps"
    echo
    (cd "$work" && TAG="$tag" ./run.sh report)
} > "$here/results/$tag.md"
echo "report: benchmarks/results/$tag.md"
