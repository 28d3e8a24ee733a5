#!/bin/sh
# Build the preload shim. Part of `npm install` / `npm run build`; without a C compiler tcpka still works,
# only `tcpka run` and `tcpka trace` are unavailable (they say so).
set -e
cd "$(dirname "$0")"
CC=${CC:-cc}
if ! command -v "$CC" >/dev/null 2>&1; then
  echo "tcpka: no C compiler ($CC): tcpka run and tcpka trace will be unavailable (apt-get install gcc libc6-dev)" >&2
  exit 0
fi
mkdir -p build
# -fno-builtin keeps the shim's own code from becoming calls it does not expect; symbols other than the hooks
# stay hidden so that they cannot clash with the program's.
$CC -O2 -g -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror -o build/libtcpka.so.tmp preload.c -ldl
mv build/libtcpka.so.tmp build/libtcpka.so
