#!/usr/bin/env bash
# Runs test binaries inside ONE throwaway VM on Debian's stock kernel (it has IP_VS, which this
# machine's kernel lacks, and it is the older kernel users run). The binaries are built here on
# the host; the VM (virtme-ng, qemu without KVM: nested KVM hangs here) shares the host's
# filesystem read-only (its writes go to a throwaway overlay) plus one read-write directory
# that carries results back.
#
#   scripts/vm-test.sh [OPTIONS] [--] ARG...
#
# Each ARG is either
#   TARGET[:FILTER]  a test target of the workspace (tests/TARGET.rs), run with FILTER as its
#                    name filter; e.g. `flow`, `flow:etp-local`, `ipvs`, `cli_apply`
#   NAME=VALUE       an environment variable for the targets AFTER it (so one VM can run the
#                    same target with different settings), e.g.
#                    `SVCC_FLOW_LOADERS=nft,apply flow SVCC_FLOW_LOADERS=ipvs flow`
# The host's SVCC_*, INSTA_*, RUST_BACKTRACE and RUST_LOG variables are passed to every target.
#
# Options (or environment):
#   --kernel PATH    (SVCC_VM_KERNEL)  default: the newest /boot/vmlinuz-*-amd64 (Debian's)
#   --timeout SECS   (SVCC_VM_TIMEOUT) the whole VM run, boot included; default 3600
#   --memory SIZE    (SVCC_VM_MEMORY)  default 3G
#   --cpus N         (SVCC_VM_CPUS)    default 2
#   --keep           keep the result directory even when everything passed (SVCC_VM_KEEP=1)
#
# Exit status: 0 when every target passed; 1 when a target failed, left a network namespace
# behind, or the VM did not boot / timed out; 2 for a usage error or a missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

kernel=${SVCC_VM_KERNEL:-}
timeout_s=${SVCC_VM_TIMEOUT:-3600}
memory=${SVCC_VM_MEMORY:-3G}
cpus=${SVCC_VM_CPUS:-2}
keep=${SVCC_VM_KEEP:-0}
args=()
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage ;;
    --) shift; args+=("$@"); break ;;
    -*) echo "vm-test: unknown option $1" >&2; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -gt 0 ] || { echo "vm-test: no test target given" >&2; usage; }

die() { echo "vm-test: $*" >&2; exit 2; }
for tool in vng qemu-system-x86_64 python3; do
  command -v "$tool" >/dev/null || die "\`$tool\` not found: run scripts/setup.sh (it installs the VM packages)"
done
if [ -z "$kernel" ]; then
  kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$kernel" ] || die "no /boot/vmlinuz-*-amd64: install Debian's kernel (apt-get install linux-image-amd64; scripts/setup.sh does)"
fi
[ -r "$kernel" ] || die "kernel $kernel is not readable"

# Split the arguments into runs: (environment, target, filter).
targets=()      # unique target names, for the build
run_env=()      # per run: newline-separated NAME=VALUE lines
run_target=()
run_filter=()
cur_env=""
for a in "${args[@]}"; do
  if [[ "$a" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    # A later value replaces an earlier one of the same name.
    cur_env=$(printf '%s' "$cur_env" | grep -v "^${a%%=*}=" || true)
    [ -n "$cur_env" ] && cur_env+=$'\n'
    cur_env+="$a"$'\n'
    continue
  fi
  t=${a%%:*}
  f=""
  [[ "$a" == *:* ]] && f=${a#*:}
  [[ "$t" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad test target \`$a\` (expected TARGET[:FILTER] or NAME=VALUE)"
  run_env+=("$cur_env")
  run_target+=("$t")
  run_filter+=("$f")
  [[ " ${targets[*]-} " == *" $t "* ]] || targets+=("$t")
done
[ ${#run_target[@]} -gt 0 ] || die "no test target given (only NAME=VALUE arguments)"

# Build on the host (never inside the VM) and locate the binaries from cargo's JSON messages.
cargo_args=(test --workspace --no-run --message-format=json)
for t in "${targets[@]}"; do cargo_args+=(--test "$t"); done
echo "vm-test: building ${targets[*]} on the host" >&2
if ! json=$(cargo "${cargo_args[@]}" 2> >(grep -v '^ *\(Compiling\|Finished\|Executable\|Blocking\)' >&2)); then
  # With JSON messages the compiler's diagnostics are on stdout: show them as cargo would.
  printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-message" and m["message"].get("rendered"):
        sys.stderr.write(m["message"]["rendered"])
'
  die "cargo ${cargo_args[*]} failed"
fi
declare -A bin
stage=()        # executables the tests run (theirs and the workspace's binaries), see guest.sh
while read -r kind name exe; do
  [ "$kind" = test ] && bin[$name]=$exe
  stage+=("$exe")
done < <(printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = "test" if "test" in m["target"]["kind"] else "bin"
        print(kind, m["target"]["name"], m["executable"])
')
for t in "${targets[@]}"; do
  [ -n "${bin[$t]-}" ] || die "cargo built no test binary named \`$t\`"
done

out=$(mktemp -d /tmp/svcc-vm.XXXXXX)
guest="$out/guest.sh"
q() { printf '%q' "$1"; }
{
  echo '#!/bin/bash'
  echo '# Generated by scripts/vm-test.sh: runs inside the VM.'
  echo "out=$(q "$out")"
  echo "cd $(q "$root") && [ -r Cargo.toml ] || { echo \"vm: the workspace $(q "$root") is not visible in the guest\" | tee \"\$out/error\"; exit 1; }"
  printf 'stage=('; for e in "${stage[@]}"; do printf ' %q' "$e"; done; echo ' )'
  cat <<'EOF'
# The guest's /tmp is a throwaway overlay over the host's /tmp (which may hold the sources):
# the tests get a private, empty temp directory instead, in the guest's RAM.
mkdir -p /run/svcc-vm
mount -t tmpfs -o mode=1777 tmpfs /run/svcc-vm
mkdir -m 1777 /run/svcc-vm/tmp /run/svcc-vm/bin
export TMPDIR=/run/svcc-vm/tmp
uname -r > "$out/kernel"
# Modules the suites use; the kernel would autoload most of them, loading them here makes a
# missing one a clear line in the log instead of a confusing test failure.
for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh \
         ip_vs_sed ip_vs_nq ip_vs_mh dummy veth nf_tables nf_conntrack; do
  modprobe "$m" 2>>"$out/modprobe.log" || echo "vm: modprobe $m failed" | tee -a "$out/modprobe.log"
done
# The root filesystem is 9p without a page cache: every exec of a (large, debug) binary reads it
# all again through qemu. Copy the executables into RAM once and bind them over their paths
# (tests find them by absolute path, e.g. CARGO_BIN_EXE_svcc).
i=0
for exe in "${stage[@]}"; do
  i=$((i + 1))
  cp "$exe" "/run/svcc-vm/bin/$i" && mount --bind "/run/svcc-vm/bin/$i" "$exe" \
    || echo "vm: could not stage $exe in RAM (runs from 9p)"
done
# /run is the guest's own tmpfs: `ip netns add` needs /run/netns.
mkdir -p /run/netns
ulimit -n 65536
export PATH="$PATH:/usr/local/sbin:/usr/local/bin"
export HOME=$TMPDIR
EOF
  # Host variables every target gets.
  while IFS='=' read -r name _; do
    [[ "$name" =~ ^(SVCC_|INSTA_|RUST_BACKTRACE$|RUST_LOG$) ]] || continue
    [[ "$name" =~ ^SVCC_VM_ ]] && continue
    echo "export $name=$(q "${!name}")"
  done < <(env)
  for i in "${!run_target[@]}"; do
    t=${run_target[$i]}
    echo "echo; echo \"vm: ==== [$i] $(q "$t")${run_filter[$i]:+:${run_filter[$i]}} $(printf '%s' "${run_env[$i]}" | tr '\n' ' ')====\""
    echo "("
    while IFS= read -r kv; do
      [ -n "$kv" ] && echo "  export $(q "${kv%%=*}")=$(q "${kv#*=}")"
    done <<< "${run_env[$i]}"
    echo "  start=\$(date +%s)"
    echo "  $(q "${bin[$t]}")${run_filter[$i]:+ $(q "${run_filter[$i]}")} 2>&1 | tee \"\$out/$i.log\""
    echo "  rc=\${PIPESTATUS[0]}"
    echo "  echo \$(( \$(date +%s) - start )) > \"\$out/$i.secs\""
    # A namespace left behind is a failure of the target (the VM hides it from the host check).
    echo "  left=\$(ip netns list 2>/dev/null | grep -E '^svcc' || true)"
    echo "  if [ -n \"\$left\" ]; then echo \"vm: left network namespaces behind:\"; echo \"\$left\"; [ \$rc = 0 ] && rc=99; fi >> \"\$out/$i.log\""
    echo "  echo \$rc > \"\$out/$i.rc\""
    echo ")"
    # Work directories of failed flow cases are kept in the guest's /tmp: bring them back.
    echo "for d in \"\$TMPDIR\"/svcc-flow-*; do [ -n \"\$(ls -A \"\$d\" 2>/dev/null)\" ] && mkdir -p \"\$out/guest-tmp\" && cp -r \"\$d\" \"\$out/guest-tmp/\"; rm -rf \"\$d\"; done"
  done
  echo 'touch "$out/done"'
} > "$guest"

echo "vm-test: booting $kernel (${cpus} cpus, ${memory}, no KVM; timeout ${timeout_s}s); results in $out" >&2
t0=$(date +%s)
set +e
timeout --kill-after=30 "$timeout_s" \
  vng -r "$kernel" --disable-kvm --cpus "$cpus" --memory "$memory" --rwdir "$out" --cwd "$root" \
      --exec "bash $out/guest.sh" </dev/null 2>&1 | tee "$out/console.log"
vm_rc=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - t0 ))

# Report: kernel, one line per run, the failing runs' output.
failed=0
echo
echo "vm-test: kernel $(cat "$out/kernel" 2>/dev/null || echo '(guest never started)') — VM run ${elapsed}s"
if [ ! -f "$out/kernel" ]; then
  echo "vm-test: the VM did not boot (vng exit $vm_rc); last console lines:" >&2
  tail -n 40 "$out/console.log" >&2
  failed=1
fi
if [ "$vm_rc" = 124 ] || [ "$vm_rc" = 137 ]; then
  echo "vm-test: the VM run timed out after ${timeout_s}s" >&2
  failed=1
fi
[ -s "$out/error" ] && { cat "$out/error" >&2; failed=1; }
[ -s "$out/modprobe.log" ] && { echo "vm-test: modprobe said:"; sed 's/^/  /' "$out/modprobe.log"; }
for i in "${!run_target[@]}"; do
  name="${run_target[$i]}${run_filter[$i]:+:${run_filter[$i]}}"
  envs=$(printf '%s' "${run_env[$i]}" | tr '\n' ' ')
  rc=$(cat "$out/$i.rc" 2>/dev/null || echo "none")
  secs=$(cat "$out/$i.secs" 2>/dev/null || echo "?")
  summary=$(grep -E '^test result:' "$out/$i.log" 2>/dev/null | tail -n 1 || true)
  if [ "$rc" = 0 ]; then
    echo "vm-test: PASS $name ${envs:+($envs)}${secs}s ${summary}"
  else
    failed=1
    echo "vm-test: FAIL $name ${envs:+($envs)}exit ${rc}, ${secs}s ${summary}"
  fi
done
for i in "${!run_target[@]}"; do
  rc=$(cat "$out/$i.rc" 2>/dev/null || echo "none")
  [ "$rc" = 0 ] && continue
  [ -f "$out/$i.log" ] || continue
  echo
  echo "vm-test: ---- output of the failed run [$i] ${run_target[$i]} ----"
  # libtest prints the failures (with their captured output) after a `failures:` line.
  if grep -q '^failures:$' "$out/$i.log"; then
    sed -n '/^failures:$/,$p' "$out/$i.log"
  else
    tail -n 60 "$out/$i.log"
  fi
done
if [ "$failed" = 0 ] && [ "$keep" != 1 ]; then
  rm -rf "$out"
else
  [ -d "$out/guest-tmp" ] && echo "vm-test: the guest's /tmp/svcc-flow-* work directories are in $out/guest-tmp/"
  echo "vm-test: logs kept in $out"
fi
exit "$failed"
