#!/usr/bin/env bash
# Installs what svcc's build and tests need on a Debian machine (run as root).
# Idempotent: a second run only checks.
set -euo pipefail
pkgs=(nftables iptables libnftnl-dev libmnl-dev pkg-config conntrack iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust >= 1.85 (rustup)" >&2; exit 1; }
