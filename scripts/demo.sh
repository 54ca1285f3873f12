#!/usr/bin/env bash
# README's first command: installs what is missing, builds Haven and its
# plugins, and runs the demo end to end on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-plugins.sh
cargo build -p haven
haven=$PWD/target/debug/haven
demo=$PWD/target/demo
rm -rf "$demo"
mkdir -p "$demo"
export HAVEN_HOME=$demo/home
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    for pid in ${serve_pid:-} ${target_pid:-} ${lab_pid:-}; do kill "$pid" 2>/dev/null || true; done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
trap cleanup EXIT
summary() { python3 -c 'import json,sys
r = json.load(sys.stdin)
ms = lambda v: "%.1f s" % (v / 1000) if v is not None else "not reached"
print("%s %s: %s; measured RTO %s (target %s)" % (r["mode"], r["execution"], r["outcome"], ms(r["measured_rto_ms"]), ms(r["rto_target_ms"])))
ages = [p["age_ms"] for p in r["recovery_points"]]
if ages: print("recovery points used: %d, oldest %s old (RPO target %s)" % (len(ages), ms(max(ages)), ms(r["rpo_target_ms"])))'; }

step "Package and install the connector plugins (sha256 verified, precompiled, cached)"
for p in plugins/example plugins/lab plugins/script-smoke tests/fixtures/hostile tests/fixtures/python-plugin; do
    "$haven" plugin package "$p" --out "$demo/packages/$(basename "$p")"
    "$haven" plugin install "$demo/packages/$(basename "$p")"
done
"$haven" plugin list
"$haven" plugin inspect python-fixture

step "Configure instances and call them through the sandbox"
cat > "$HAVEN_HOME/instances.toml" <<'TOML'
[instances.inventory]
plugin = "python-fixture"
[instances.inventory.settings]
site = "prod"

[instances.unruly]
plugin = "hostile"
TOML
"$haven" plugin instances
"$haven" plugin call inventory inventory.find-vms '[{"all-of": [{"key": "tier", "value": "db"}]}]'
echo "-- a plugin stuck in a loop is stopped at its deadline; the host goes on:"
"$haven" plugin call unruly inventory.get-vm '["loop"]' || true
"$haven" plugin call unruly inventory.get-vm '["ok"]' | grep '"name"'

step "Start the lab sites (prod, dr) and drive them through the lab connector"
# The demo plan's smoke test probes the lab at this fixed address.
lab_port=17480
"$haven" lab --dir "$demo/lab" --listen "127.0.0.1:$lab_port" --seed-vms 6 --seed-groups 3 \
    --seed-disk-bytes 67108864 --boot-delay-ms 300 --seed-power-on &
lab_pid=$!
for _ in $(seq 100); do [ -f "$demo/lab/token" ] && break; sleep 0.1; done
sleep 0.3
for site in prod dr; do
cat >> "$HAVEN_HOME/instances.toml" <<TOML

[instances.lab-$site]
plugin = "lab"
allow_hosts = ["127.0.0.1"]
[instances.lab-$site.settings]
endpoint = "http://127.0.0.1:$lab_port"
site = "$site"
[instances.lab-$site.secrets]
token = { file = "$demo/lab/token" }
[instances.lab-$site.dirs]
lab = "$demo/lab"
TOML
done
"$haven" plugin call lab-prod connector.check
"$haven" plugin call lab-prod inventory.list-vms | python3 -c 'import json,sys; vms=json.load(sys.stdin)["ok"]; print(len(vms), "VMs at prod:", ", ".join(v["name"] for v in vms))'

step "Rehearse a recovery plan: seeded dry runs, report and evidence pack"
"$haven" plan validate host/plan/examples/three-tier.toml
"$haven" plan simulate host/plan/examples/three-tier.toml --mode test --seed 7 \
    --report "$demo/reports" | tail -4
echo "report: $demo/reports/report.html; evidence pack: $demo/reports/evidence.json"
echo "-- the same drill when the production site is lost: dependents are skipped, cleanup still runs:"
"$haven" plan simulate host/plan/examples/three-tier.toml --mode test --seed 7 --lose vcenter-prod | tail -3 || true

step "Protect the prod site: replicate every VM's disks with the block transport (recovery points + catalog)"
# Give the seeded VMs' disks some content: 16 MiB of data each.
python3 - "$demo/lab" <<'PY'
import json, random, sys, pathlib
lab = pathlib.Path(sys.argv[1])
state = json.loads((lab / "state.json").read_text())
random.seed(5)
for img in sorted((lab / "disks").rglob("*.img")):
    with open(img, "r+b") as f:
        f.seek(1 << 20); f.write(random.randbytes(16 << 20))
PY
vms=$("$haven" plugin call lab-prod inventory.list-vms | python3 -c 'import json,sys; print(" ".join("--vm lab-prod/"+v["name"] for v in json.load(sys.stdin)["ok"]))')
# shellcheck disable=SC2086
RUST_LOG=warn "$haven" protect $vms --to lab-dr --repo "$demo/replicas"
echo "-- the VMs keep writing; a second pass sends only the changed blocks:"
python3 - "$demo/lab" <<'PY'
import random, sys, pathlib
random.seed(6)
for img in sorted(pathlib.Path(sys.argv[1], "disks").rglob("*.img")):
    with open(img, "r+b") as f:
        for _ in range(64):
            f.seek(random.randrange(256, 4352) * 4096); f.write(random.randbytes(4096))
PY
# shellcheck disable=SC2086
RUST_LOG=warn "$haven" protect $vms --to lab-dr --repo "$demo/replicas"

step "Readiness check and plan-definition report of the demo plan"
cat > "$HAVEN_HOME/scripts.toml" <<TOML
[scripts.script-smoke]
allow_hosts = ["127.0.0.1:$lab_port"]
TOML
cat > "$HAVEN_HOME/notify.toml" <<TOML
[channels.ops]
file = "$demo/notifications.jsonl"
TOML
plan=host/plan/examples/lab-shop.toml
"$haven" plan validate "$plan"
"$haven" readiness "$plan" --json "$demo/reports/readiness.json" --html "$demo/reports/readiness.html" \
    --definition-html "$demo/reports/plan.html"
echo "reports: $demo/reports/readiness.html, $demo/reports/plan.html"

step "Serve the API and dashboard; store the plan; check it through the API"
api_port=$(free_port)
RUST_LOG=warn,haven=info "$haven" serve --listen "127.0.0.1:$api_port" &
serve_pid=$!
export HAVEN_SERVER="http://127.0.0.1:$api_port"
for _ in $(seq 100); do curl -fs "$HAVEN_SERVER/api/v1/cluster" >/dev/null 2>&1 && break; sleep 0.1; done
echo "dashboard: $HAVEN_SERVER/ (token: $HAVEN_HOME/admin-token)"
"$haven" plan push "$plan"
"$haven" plan readiness lab-shop
"$haven" plan list
echo "-- from now on the primary takes a point of every VM each 15 minutes (and one right now):"
# shellcheck disable=SC2086
"$haven" protect $vms --to lab-dr --repo "$demo/replicas" --every 15m
"$haven" protect --list

step "Drill: recover copies into the isolated dr-test network, smoke-test them, clean up"
"$haven" run start lab-shop --mode test --watch | grep -E "step-(succeeded|failed)|execution" | tail -12
drill=$("$haven" run list | awk 'NR==2 {print $1}')
"$haven" run report "$drill" --html "$demo/reports/drill.html" --evidence "$demo/reports/drill-evidence.json" | summary
echo "report: $demo/reports/drill.html; evidence pack: $demo/reports/drill-evidence.json"

step "Failover: an operator approves, then the shop comes up at the dr site"
"$haven" run start lab-shop --mode failover --watch | tail -3 || true
failover=$("$haven" run list | awk 'NR==2 {print $1}')
"$haven" run approve "$failover"
"$haven" run watch "$failover" | grep -E "step-(succeeded|failed)|execution" | tail -8
"$haven" run report "$failover" --html "$demo/reports/failover.html" | summary
echo "report: $demo/reports/failover.html"
"$haven" plugin call lab-dr inventory.list-vms | python3 -c 'import json,sys; vms=json.load(sys.stdin)["ok"]; print(len(vms), "VMs running at dr:", ", ".join(v["name"] for v in vms))'
echo "notifications sent:"; cat "$demo/notifications.jsonl"
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=

step "Replicate a VM disk to the DR site over TLS, as recovery points"
disk=$demo/web-01.raw
python3 - "$disk" <<'PY'
import os, sys, random
random.seed(7)
size = 256 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(size)
    # A quarter random data, a quarter program binaries, the rest zeros (holes).
    f.seek(0); f.write(random.randbytes(size // 4))
    blobs = [p for d in ("/usr/bin", "/usr/lib/x86_64-linux-gnu") for p in
             (os.path.join(d, n) for n in sorted(os.listdir(d))) if os.path.isfile(p)]
    f.seek(size // 4); left = size // 4
    for p in blobs:
        data = open(p, "rb").read(left)
        f.write(data); left -= len(data)
        if left <= 0: break
PY
port=$(free_port)
"$haven" target --listen "127.0.0.1:$port" --repo "$demo/dr-site" --self-signed --keep-points 10 &
target_pid=$!
for _ in $(seq 100); do [ -f "$demo/dr-site/target-cert.pem" ] && break; sleep 0.1; done
sleep 0.3
"$haven" replicate "$disk" --to "127.0.0.1:$port" --replica web-01 --pin "$demo/dr-site/target-cert.pem"
cp --sparse=always "$disk" "$demo/web-01.point1.raw"
echo "-- the VM writes 5% of its disk in scattered 4 KiB blocks; only those cross the wire:"
python3 - "$disk" <<'PY'
import random, sys
random.seed(11)
with open(sys.argv[1], "r+b") as f:
    for _ in range((256 << 20) // 20 // 4096):
        f.seek(random.randrange(0, (256 << 20) // 4096) * 4096)
        f.write(random.randbytes(4096))
PY
"$haven" replicate "$disk" --to "127.0.0.1:$port" --replica web-01 --pin "$demo/dr-site/target-cert.pem"
echo "-- stopping the target (the repository is opened by one process at a time)"
kill "$target_pid"; wait "$target_pid" 2>/dev/null || true; target_pid=
"$haven" replica --repo "$demo/dr-site" points web-01

step "Restore: export the first recovery point and compare it with the disk as it was"
"$haven" replica --repo "$demo/dr-site" export web-01 1 "$demo/web-01.restored.raw"
qemu-img info "$demo/web-01.restored.raw" | head -3
qemu-img compare -f raw -F raw "$demo/web-01.point1.raw" "$demo/web-01.restored.raw"
echo
echo "Demo complete. Home: $HAVEN_HOME; DR repository: $demo/dr-site"
