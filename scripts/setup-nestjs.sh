#!/usr/bin/env bash
# Installs the NestJS peers used by the interop tests (tests/nestjs/v11, tests/nestjs/v12)
# from their package-lock.json files. Idempotent: a version whose node_modules already
# matches its lockfile is skipped. Usage: scripts/setup-nestjs.sh [11] [12]   (default: both)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peer_dir="$root/tests/nestjs"
if (($#)); then versions=("$@"); else versions=(11 12); fi
min_node_major=20 # NestJS 11 and 12 both declare engines.node ">= 20"

die() { echo "setup-nestjs: $*" >&2; exit 1; }

for v in "${versions[@]}"; do
  [[ -f "$peer_dir/v$v/package-lock.json" ]] || die "unknown NestJS version '$v' (no $peer_dir/v$v/package-lock.json)"
done

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup-nestjs: node/npm not found, installing Debian's nodejs and npm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
  command -v node >/dev/null || die "node is not installed; install Node.js >= $min_node_major (https://nodejs.org)"
  command -v npm >/dev/null || die "npm is not installed; install npm (it ships with the official Node.js builds)"
fi

node_version="$(node --version)"
node_major="${node_version#v}"
node_major="${node_major%%.*}"
if (( node_major < min_node_major )); then
  die "Node.js $node_version is too old: NestJS 11/12 need Node >= $min_node_major (Debian 12's apt nodejs is 18; use a NodeSource or official build)"
fi

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Several test processes may call this at once; npm ci in the same directory must not overlap.
if command -v flock >/dev/null; then
  exec 9>"$peer_dir/.setup.lock"
  flock 9
fi

for v in "${versions[@]}"; do
  dir="$peer_dir/v$v"
  # The stamp lives inside node_modules, so `npm ci` (which deletes node_modules) invalidates it.
  stamp="$dir/node_modules/.switchboard-setup.stamp"
  want="$(hash_of "$dir/package.json" "$dir/package-lock.json") node-$node_major"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup-nestjs: v$v up to date"
    continue
  fi
  echo "setup-nestjs: installing v$v (npm ci in $dir)"
  # On Node 20, v12 prints "EBADENGINE file-type" (needs Node 22): harmless, @nestjs/common only
  # loads it lazily for FileTypeValidator, which the microservice peer never uses.
  (cd "$dir" && npm ci --no-audit --no-fund)
  echo "$want" >"$stamp"
done
