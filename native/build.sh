#!/bin/sh
# Build the preload shim: into native/build/libtcpka.so (`npm install` / `npm run build`), or into the file given
# as $1 (tcpka builds it there at first use when the shipped one cannot be loaded on this system). Without a C
# compiler tcpka still works: run and trace then say what is missing.
set -e
cd "$(dirname "$0")"
CC=${CC:-cc}
out=${1:-$PWD/build/libtcpka.so}
if ! command -v "${CC%% *}" >/dev/null 2>&1; then
  echo "tcpka: no C compiler ($CC): tcpka run and tcpka trace need one to build their library for this system (apt-get install gcc libc6-dev)" >&2
  exit 0
fi
mkdir -p "$(dirname "$out")"
# glibc before 2.34 has dlsym in libdl.so.2 only: name it, so that one build also loads there (preload.c binds
# the old dlsym version). -print-file-name answers a bare name when there is no such file (musl).
libdl=-ldl
case $($CC -print-file-name=libdl.so.2) in /*) libdl="-Wl,--no-as-needed -l:libdl.so.2 -Wl,--as-needed" ;; esac
# Symbols other than the hooks stay hidden so that they cannot clash with the program's. No -g: no debug info
# in a file that is loaded into other programs; the symbol table stays, so that profilers (bench/shim.ts runs
# callgrind) still name the shim's own functions.
tmp="$out.$$.tmp"
trap 'rm -f "$tmp"' EXIT
# shellcheck disable=SC2086 # $CC and $libdl are word lists
$CC -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror -o "$tmp" preload.c events.c $libdl
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
