#!/usr/bin/env bash
# Provide a consul binary for the Consul test tier and print its path on stdout.
#
# Order: $CONSUL_BIN if it is executable, `consul` on PATH, a binary this script built before
# (in $SHOVELING_CACHE_DIR, default ~/.cache/shoveling_ray), else build Consul v1.14.5 (MPL-2.0)
# from Go modules. No registry ships a consul binary and later releases are not open source.
#
# Consul's own go.mod replaces its nested modules with local directories, so
# `go install github.com/hashicorp/consul@v1.14.5` fails; a throwaway wrapper module that
# requires consul and pins the nested modules to the versions consul's go.mod names does build.
# Progress goes to stderr so that `CONSUL_BIN=$(scripts/provide-consul.sh)` works.
set -euo pipefail

VERSION=1.14.5
cache_dir=${SHOVELING_CACHE_DIR:-$HOME/.cache/shoveling_ray}
target="$cache_dir/consul-$VERSION/consul"

if [[ -n "${CONSUL_BIN:-}" && -x "${CONSUL_BIN}" ]]; then
  echo "$CONSUL_BIN"; exit 0
fi
if command -v consul >/dev/null 2>&1; then
  command -v consul; exit 0
fi
if [[ -x "$target" ]]; then
  echo "$target"; exit 0
fi

GO=${GO:-$(command -v go || true)}
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
if [[ -z "$GO" ]]; then
  echo "provide-consul: no consul binary found and no Go toolchain to build one." >&2
  echo "provide-consul: install Go (1.21+) or set CONSUL_BIN to a consul binary." >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "provide-consul: building consul v$VERSION with $("$GO" version) in $work" >&2
echo "provide-consul: about 3-4 minutes on a cold Go module cache, under one minute warm" >&2
cd "$work"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
"$GO" mod init shoveling.local/consulbuild >&2 2>&1
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/hashicorp/consul"
GO
"$GO" mod edit \
  -require=github.com/hashicorp/consul@v$VERSION \
  -require=github.com/hashicorp/consul/api@v1.18.0 \
  -require=github.com/hashicorp/consul/proto-public@v0.2.1 \
  -require=github.com/hashicorp/consul/sdk@v0.13.0 \
  -exclude=github.com/hashicorp/go-msgpack@v1.1.5 \
  -exclude=github.com/hashicorp/go-msgpack@v1.1.6
echo "provide-consul: resolving modules" >&2
"$GO" get github.com/modern-go/reflect2@v1.0.2 github.com/json-iterator/go@v1.1.12 >&2
"$GO" mod tidy >&2
echo "provide-consul: compiling" >&2
mkdir -p "$(dirname "$target")"
"$GO" build -trimpath -ldflags "-s -w" -o "$target.partial" github.com/hashicorp/consul >&2
mv "$target.partial" "$target"
"$target" version >&2
echo "$target"
