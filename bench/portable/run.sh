#!/bin/bash
# Run bench sections on a machine with no package registry, from what pack.sh packed:
# unpack the tools, install the wheels, start PostgreSQL (as nobody when run as root:
# it refuses root) on 127.0.0.1:$PGPORT, then bench/run.py. Run from the repository root.
#
#   bench/portable/run.sh [run.py arguments]     # default: --only scaling,scaling-sqlite
#
# Environment: PYTHON (default python3), PGPORT (5433), ROOT (where the tools go,
# default /tmp/relaygate-bench-tools).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
packed=$here/out
py=${PYTHON:-python3}
root=${ROOT:-/tmp/relaygate-bench-tools}
pgport=${PGPORT:-5433}
[ -f "$packed/tools.tar.xz" ] || { echo "run.sh: run bench/portable/pack.sh first" >&2; exit 2; }
rm -rf "$root" && mkdir -p "$root/bin" "$root/site" && tar -C "$root" -xJf "$packed/tools.tar.xz" || exit 3
for tool in wrk hey nginx redis-server; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/usr/bin/%s "$@"\n' "$root" "$root" "$tool" > "$root/bin/$tool"
done
chmod +x "$root"/bin/*
# bench/benchkit/upstream.py loads the echo module from Debian's path; so do zoneinfo users
module=/usr/lib/nginx/modules/ngx_http_echo_module.so
[ -e $module ] || { mkdir -p "$(dirname $module)" && cp "$root$module" $module; } || exit 3
[ -e /usr/share/zoneinfo/UTC ] || { mkdir -p /usr/share/zoneinfo && cp -a "$root/zoneinfo/." /usr/share/zoneinfo/; } || exit 3
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$root/site" "$packed"/whl/*.whl || exit 4
cp -r "$packed/site/bpe_openai" "$root/site/"
printf '#!/bin/sh\nexec %s -m relaygate "$@"\n' "$(command -v "$py")" > "$root/bin/relaygate"
chmod +x "$root/bin/relaygate"
export PATH=$root/bin:$PATH PYTHONPATH=$root/site:$PWD/src PYTHONUNBUFFERED=1 TZ=UTC
export RELAYGATE_BENCH_EXE=$root/bin/relaygate
export RELAYGATE_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:$pgport
pgbin=$root/usr/lib/postgresql/$(cat "$packed/postgresql-version")/bin data=$root/pgdata
as_pg() {  # PostgreSQL refuses to run as root: as nobody then
  if [ "$(id -u)" = 0 ]; then
    "$py" -c 'import os, sys; os.chdir("/tmp"); os.setgroups([]); os.setgid(65534); os.setuid(65534); os.execv("/usr/bin/env", ["env", *sys.argv[1:]])' LD_LIBRARY_PATH="$root/lib" HOME=/tmp "$@"
  else
    env LD_LIBRARY_PATH="$root/lib" "$@"
  fi
}
mkdir -p "$data" && chmod 700 "$data" && { [ "$(id -u)" != 0 ] || chown 65534:65534 "$data"; }
as_pg "$pgbin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C > "$root/initdb.log" 2>&1 || { cat "$root/initdb.log"; exit 5; }
as_pg "$pgbin/pg_ctl" -D "$data" -l "$data/postgresql.log" -w -t 60 -o "-c listen_addresses=127.0.0.1 -c port=$pgport -c max_connections=400 -c jit=off -c unix_socket_directories=/tmp" start || exit 5
trap 'as_pg "$pgbin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1' EXIT
if [ $# -eq 0 ]; then set -- --only scaling,scaling-sqlite; fi
"$py" bench/run.py "$@"
