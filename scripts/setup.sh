#!/usr/bin/env bash
# Installs what svcc's build and tests need on a Debian machine (run as root).
# Idempotent: a second run only checks.
#
# Besides the build and the host tests, it installs what scripts/vm-test.sh needs to boot
# Debian's stock kernel in a throwaway VM (IP_VS, and an older kernel than the host's):
# qemu, the kernel, busybox (virtme-ng's initramfs), ipvsadm (to compare and inspect), and
# virtme-ng from PyPI. SVCC_NO_VM=1 skips them.
set -euo pipefail
pkgs=(nftables iptables libnftnl-dev libmnl-dev pkg-config conntrack iproute2)
if [ "${SVCC_NO_VM:-0}" != 1 ]; then
  pkgs+=(qemu-system-x86 linux-image-amd64 busybox-static ipvsadm)
  python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
fi
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
# virtme-ng, pinned (its command line is what scripts/vm-test.sh speaks).
vng_version=1.42
if [ "${SVCC_NO_VM:-0}" != 1 ] && ! vng --version 2>/dev/null | grep -qx "virtme-ng $vng_version"; then
  echo "setup: installing virtme-ng $vng_version (pip)"
  # Debian's own Python refuses a system-wide pip install (PEP 668) without the flag.
  python3 -m pip install -q --root-user-action=ignore "virtme-ng==$vng_version" 2>/dev/null \
    || python3 -m pip install -q --root-user-action=ignore --break-system-packages "virtme-ng==$vng_version"
  hash -r
  command -v vng >/dev/null || { echo "setup: virtme-ng installed but \`vng\` is not on PATH" >&2; exit 1; }
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust >= 1.85 (rustup)" >&2; exit 1; }
