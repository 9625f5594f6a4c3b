#!/usr/bin/env bash
# A by-hand check of the IPVS mode's layout with real IPVS: compiles tests/ipvs/glue.yaml with
# `svcc compile --backend ipvs`, boots Debian's kernel (it has IP_VS) in a throwaway VM
# (virtme-ng, no KVM), loads the three parts with ipvsadm-restore, `ip addr` and `nft -f` into
# a node namespace, and sends TCP from a client namespace (external, pod) and from the node to a
# backend namespace that answers with the source it sees. Every outcome is asserted (masquerade
# or not, REJECT, DROP). The real suite is the flow tests' `ipvs` loader (svcc apply); this
# script needs only the compiler.
#
#   tests/ipvs/vm-check.sh [path/to/svcc]      (default: target/debug/svcc)
#
# Exit status 0 when every probe had its outcome; 1 otherwise; 2 when a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
svcc=${1:-target/debug/svcc}
kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
for t in vng python3 "$svcc"; do command -v "$t" >/dev/null || { echo "vm-check: $t missing" >&2; exit 2; }; done
[ -n "$kernel" ] || { echo "vm-check: no /boot/vmlinuz-*-amd64" >&2; exit 2; }
dir=$(mktemp -d /tmp/svcc-ipvs-vmcheck.XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$svcc" compile --backend ipvs --hostname-override node-a --node-ip 192.168.0.2 \
  --cluster-cidr 10.0.0.0/16 --service-cidr 172.30.0.0/16 tests/ipvs/glue.yaml > "$dir/all.txt"
for s in ipvsadm dummy-addresses nft; do
  awk -v want="# svcc:section $s" '/^# svcc:section /{on=($0==want); next} on' "$dir/all.txt" > "$dir/$s"
done
cat > "$dir/server.py" <<'PY'
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(64)
while True:
    c, a = s.accept()
    c.sendall((a[0] + "\n").encode()); c.close()
PY
cat > "$dir/client.py" <<'PY'
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(); s.settimeout(2)
if src != "-": s.bind((src, 0))
try:
    s.connect((dst, port)); print("seen-as-" + s.recv(100).decode().strip())
except ConnectionRefusedError: print("refused")
except socket.timeout: print("timeout")
PY
cat > "$dir/vm.sh" <<'VM'
#!/bin/sh
# Runs inside the VM. Namespaces: n (node), c (client: external 203.0.113.x, pod 10.0.5.5),
# b (the endpoint 10.0.2.10 of default/web).
cd "$1"
exec > out.txt 2>&1
set -e
modprobe ip_vs; modprobe ip_vs_rr; modprobe dummy; modprobe veth
ip netns add n; ip netns add c; ip netns add b
ip -n n link add eth0 type veth peer eth0 netns c
ip -n n link add vb type veth peer eth0 netns b
ip -n n addr add 192.168.0.2/24 dev eth0; ip -n c addr add 192.168.0.9/24 dev eth0
ip -n n addr add 10.0.2.1/24 dev vb; ip -n b addr add 10.0.2.10/24 dev eth0
for ns in n c b; do ip -n $ns link set lo up; ip -n $ns link set eth0 up; done
ip -n n link set vb up
for a in 10.0.5.5 203.0.113.9 203.0.113.99; do ip -n c addr add $a/32 dev lo; done
ip -n c route add default via 192.168.0.2
ip -n b route add default via 10.0.2.1
ip -n n route add 10.0.5.5/32 via 192.168.0.9; ip -n n route add 203.0.113.0/24 via 192.168.0.9
ip netns exec n sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.vs.conntrack=1
ip -n n link add svcc-ipvs0 type dummy
for a in $(cat dummy-addresses); do ip -n n addr add "$a" dev svcc-ipvs0; done
ip netns exec n nft -f nft
ip netns exec n ipvsadm-restore < ipvsadm
ip netns exec b python3 server.py &
sleep 2
set +e
fail=0
probe() { # NS SRC DST PORT WANT WHAT
  got=$(ip netns exec "$1" python3 client.py "$2" "$3" "$4")
  if [ "$got" = "$5" ]; then echo "ok   $6: $got"; else echo "FAIL $6: $got, want $5"; fail=1; fi
}
probe c 203.0.113.9 172.30.0.10 80 seen-as-10.0.2.1 "external to a ClusterIP: masqueraded (detector)"
probe c 10.0.5.5 172.30.0.10 80 seen-as-10.0.5.5 "pod to a ClusterIP: source kept"
probe n - 172.30.0.10 80 seen-as-10.0.2.1 "node to a ClusterIP: masqueraded (the VIP is its source)"
probe c 203.0.113.9 198.51.100.10 80 seen-as-10.0.2.1 "allowed source to the LB IP: masqueraded"
probe c 203.0.113.99 198.51.100.10 80 timeout "source outside loadBalancerSourceRanges: dropped"
probe c 203.0.113.9 192.168.0.2 30080 seen-as-10.0.2.1 "NodePort (eTP Cluster): masqueraded"
probe c 203.0.113.9 172.30.0.11 80 refused "ClusterIP without endpoints: rejected"
probe c 203.0.113.9 172.30.0.10 8081 refused "a VIP on a port that is no service: rejected"
probe c 203.0.113.9 192.0.2.12 80 timeout "eTP Local without local endpoint, external: dropped"
echo "result $fail"
VM
echo "vm-check: booting $kernel (about 2-5 minutes without KVM)" >&2
timeout 900 vng -r "$kernel" --disable-kvm --memory 1G --cpus 2 --rwdir "$dir" \
  --exec "sh $dir/vm.sh $dir" > "$dir/vng.log" 2>&1 || true
cat "$dir/out.txt" 2>/dev/null || { cat "$dir/vng.log" >&2; exit 1; }
grep -q '^result 0$' "$dir/out.txt"
