#!/bin/bash
# Pack what bench/run.py needs to run on an x86-64 Linux machine that has Python but no
# package registry (an air-gapped lab host, a lent machine): this Debian/Ubuntu host's
# wrk, hey, nginx with its echo module, redis-server and PostgreSQL, with the shared
# libraries they load (glibc's own left out), and the gateway's wheels for the target
# machine's Python. Writes bench/portable/out/; copy the repository with it and run
# bench/portable/run.sh there. See bench/README.md, "A machine with no package registry".
#
#   bench/portable/pack.sh [PYTHON_VERSION]      # the target's Python, default 3.12
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${1:-3.12}
cd "$repo"
out=$here/out stage=$here/.stage
rm -rf "$out" "$stage" && mkdir -p "$out/whl" "$stage/root/lib"
root=$stage/root
pg=$(ls -d /usr/lib/postgresql/*/ 2>/dev/null | sort -V | tail -1)
pg=${pg%/}
[ -n "$pg" ] || { echo "pack.sh: no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)" >&2; exit 2; }
for tool in wrk hey nginx redis-server; do
  command -v $tool >/dev/null || { echo "pack.sh: $tool missing (see bench/README.md, Requirements)" >&2; exit 2; }
done
echo "$(basename "$pg")" > "$out/postgresql-version"
bins=("$(command -v wrk)" "$(command -v hey)" "$(command -v nginx)" "$(command -v redis-server)"
      "$pg/bin/initdb" "$pg/bin/pg_ctl" "$pg/bin/postgres")
for b in "${bins[@]}"; do  # by content: redis-server is a link whose name picks its mode
  mkdir -p "$root/usr/bin" && cp -L "$b" "$root/usr/bin/$(basename "$b")"
done
echo=/usr/lib/nginx/modules/ngx_http_echo_module.so
mkdir -p "$root$(dirname "$echo")" && cp "$echo" "$root$echo"
# PostgreSQL finds its share/ and lib/ relative to its binaries: keep their layout
mkdir -p "$root$pg/bin" "$root$pg/lib"
mv "$root/usr/bin/initdb" "$root/usr/bin/pg_ctl" "$root/usr/bin/postgres" "$root$pg/bin/"
for so in "$pg"/lib/*.so; do [[ $so == *llvmjit* ]] || cp "$so" "$root$pg/lib/"; done  # jit=off
share=/usr/share/postgresql/$(basename "$pg")
mkdir -p "$root$(dirname "$share")" && cp -a "$share" "$root$share"
cp -a /usr/share/zoneinfo "$root/zoneinfo"
glibc='^(libc|libm|libpthread|libdl|librt|libresolv|libutil|libanl|ld-linux-x86-64)\.so'
for o in "$root"/usr/bin/* "$root$pg"/bin/* "$root$pg"/lib/*.so "$root$echo"; do
  ldd "$o" 2>/dev/null | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  [[ $(basename "$lib") =~ $glibc ]] || cp -L "$lib" "$root/lib/"
done
tar -C "$root" -cJf "$out/tools.tar.xz" .
# the gateway's dependencies as wheels for the target Python; bpe-openai (41 MB) is
# replaced by the one file of it the gateway reads (usage/tokens.py)
"$repo/.venv/bin/python" - "$stage/reqs.txt" <<'PY'
import sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
open(sys.argv[1], "w").write("\n".join(d for d in deps if not d.startswith("bpe-openai")) + "\n")
PY
platforms=()
for n in 5 12 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$repo/.venv/bin/python" -m pip download -q --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$out/whl" -r "$stage/reqs.txt"
data=$("$repo/.venv/bin/python" -c 'import importlib.util as u; print(next(iter(u.find_spec("bpe_openai").submodule_search_locations)))')
mkdir -p "$out/site/bpe_openai/data" && touch "$out/site/bpe_openai/__init__.py"
cp "$data/data/o200k_base.tiktoken.gz" "$out/site/bpe_openai/data/"
rm -rf "$stage"
du -sh "$out"
