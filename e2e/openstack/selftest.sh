#!/usr/bin/env bash
# The checks of `e2e/openstack/cloud selftest`, with the openstack CLI, against a cloud
# that is already started: STRATA_OS_JSON holds the JSON line printed by `cloud start`.
# Also usable alone: STRATA_OS_JSON=$(cat RUN_DIR/cloud.json) bash e2e/openstack/selftest.sh
set -euo pipefail
: "${STRATA_OS_JSON:?STRATA_OS_JSON must hold the JSON of cloud start}"
cache=${STRATA_CACHE:-/var/cache/strata}
venv=$cache/openstack/venv
py=$venv/bin/python
j() { "$py" -c 'import json,os,sys; v=json.loads(os.environ["STRATA_OS_JSON"]); [v:=v[k] for k in sys.argv[1:]]; print(v)' "$@"; }

export OS_CLIENT_CONFIG_FILE OS_CLOUD
OS_CLIENT_CONFIG_FILE=$(j clouds_yaml)
OS_CLOUD=$(j cloud)
admin_cloud=$(j admin_cloud)
token_expiration=$(j token_expiration)
os() { "$venv/bin/openstack" "$@"; }
# Compute microversion 2.52+ allows tags at server create (2.26+ to list/filter by tag).
osc() { "$venv/bin/openstack" --os-compute-api-version 2.96 "$@"; }

passed=0 failed=0
t_start=$SECONDS
ok() { passed=$((passed + 1)); echo "selftest: ok   - $*" >&2; }
bad() { failed=$((failed + 1)); echo "selftest: FAIL - $*" >&2; }
check() { # description command...: the command must succeed
  local what=$1; shift
  local out
  if out=$("$@" 2>&1); then ok "$what"; else bad "$what"; echo "$out" | tail -n 15 >&2; fi
}
expect_eq() { # description got want
  if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (got '$2', want '$3')"; fi
}
expect_in() { # description haystack needle
  if [[ "$2" == *"$3"* ]]; then ok "$1"; else bad "$1 ('$3' not in '$2')"; fi
}
value() { # openstack ... -f value -c FIELD, errors shown
  local out
  out=$("$@" 2>&1) || { echo "$out" | tail -n 15 >&2; return 1; }
  echo "$out"
}

tag=strata-stack=selftest
# A token issued now, checked again at the end (after the Keystone expiration, when short).
early_token=$(value os token issue -f value -c id) || early_token=
keystone_url=$(j auth_url)

# --- network: network, subnet, router to the external network, tags -------------------
net_id=$(value os network create --tag "$tag" --tag other st-net -f value -c id) || net_id=
[ -n "$net_id" ] && ok "network create --tag" || bad "network create --tag"
subnet_id=$(value os subnet create --network "$net_id" --subnet-range 10.10.0.0/24 \
  --tag "$tag" st-subnet -f value -c id) || subnet_id=
[ -n "$subnet_id" ] && ok "subnet create --tag" || bad "subnet create --tag"
expect_eq "network list --tags $tag" "$(os network list --tags "$tag" -f value -c ID)" "$net_id"
expect_eq "network list --tags $tag,other (all of)" "$(os network list --tags "$tag,other" -f value -c ID)" "$net_id"
expect_eq "network list --any-tags nope,other" "$(os network list --any-tags nope,other -f value -c ID)" "$net_id"
expect_eq "network list --not-tags $tag (public only)" "$(os network list --not-tags "$tag" -f value -c Name)" "public"
expect_eq "subnet list --tags $tag" "$(os subnet list --tags "$tag" -f value -c ID)" "$subnet_id"
check "network set --tag / unset --tag" bash -c "
  $venv/bin/openstack network set --tag added $net_id &&
  $venv/bin/openstack network show $net_id -f value -c tags | grep -q added &&
  $venv/bin/openstack network unset --tag added $net_id"

router_id=$(value os router create --tag "$tag" st-router -f value -c id) || router_id=
[ -n "$router_id" ] && ok "router create --tag" || bad "router create --tag"
check "router set --external-gateway public" os router set --external-gateway public "$router_id"
check "router add subnet" os router add subnet "$router_id" "$subnet_id"
expect_eq "router list --tags $tag" "$(os router list --tags "$tag" -f value -c ID)" "$router_id"
gw=$(os router show "$router_id" -f json -c external_gateway_info 2>&1 || true)
expect_in "router gateway on public" "$gw" "$(j external_network_id)"

sg_id=$(value os security group create --tag "$tag" --description selftest st-sg -f value -c id) || sg_id=
[ -n "$sg_id" ] && ok "security group create --tag" || bad "security group create --tag"
rule_id=$(value os security group rule create --protocol tcp --dst-port 22 --remote-ip 0.0.0.0/0 \
  --ingress "$sg_id" -f value -c id) || rule_id=
[ -n "$rule_id" ] && ok "security group rule create" || bad "security group rule create"
check "security group rule delete" os security group rule delete "$rule_id"
expect_eq "security group list --tags $tag" "$(os security group list --tags "$tag" -f value -c ID)" "$sg_id"

port_id=$(value os port create --network "$net_id" --tag "$tag" st-port -f value -c id) || port_id=
[ -n "$port_id" ] && ok "port create --tag" || bad "port create --tag"
expect_eq "port list --tags $tag" "$(os port list --tags "$tag" -f value -c ID)" "$port_id"

# --- compute ------------------------------------------------------------------------
pub=$("$py" -c '
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives import serialization as s
k = ed25519.Ed25519PrivateKey.generate()
print(k.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode() + " selftest")')
keyfile=$(mktemp); echo "$pub" >"$keyfile"
check "keypair create --public-key" os keypair create --public-key "$keyfile" st-key
rm -f "$keyfile"

t=$SECONDS
srv_id=$(value osc server create --flavor small --image "$(j image_name)" --nic "net-id=$net_id" \
  --key-name st-key --property strata:address=x --tag "$tag" --security-group "$sg_id" --wait \
  st-server -f value -c id) || srv_id=
status=$(os server show "$srv_id" -f value -c status 2>/dev/null || echo none)
expect_eq "server create --wait (small, tag, property) ACTIVE in $((SECONDS - t)) s" "$status" ACTIVE
expect_eq "server list --tags $tag (2.26+)" "$(osc server list --tags "$tag" -f value -c ID)" "$srv_id"
expect_in "server metadata strata:address" "$(os server show "$srv_id" -f value -c properties)" "strata:address"
# (Nova has no server-side filter on metadata; the provider should use tags to find.)
srv_port=$(os port list --server "$srv_id" -f value -c ID 2>/dev/null | head -n1)
expect_eq "the server's port is ACTIVE (fake ML2 binding)" "$(os port show "$srv_port" -f value -c status 2>&1)" ACTIVE

fip=$(value os floating ip create --tag "$tag" public -f value -c floating_ip_address) || fip=
[ -n "$fip" ] && ok "floating ip create on public ($fip)" || bad "floating ip create on public"
check "floating ip set --port (the server's port)" os floating ip set --port "$srv_port" "$fip"
expect_eq "floating ip list --tags $tag" "$(os floating ip list --tags "$tag" -f value -c 'Floating IP Address')" "$fip"
# (Neutron tells Nova, which refreshes the server's network info: asynchronous.)
addresses=
for _ in $(seq 1 30); do
  addresses=$(os server show "$srv_id" -f value -c addresses 2>&1 || true)
  [[ "$addresses" == *"$fip"* ]] && break
  sleep 2
done
expect_in "server shows the floating ip (Neutron -> Nova event)" "$addresses" "$fip"

gpu_a=$(value osc server create --flavor gpu1 --image "$(j image_name)" --nic "net-id=$net_id" \
  --tag "$tag" --wait st-gpu-a -f value -c id) || gpu_a=
expect_eq "server gpu1 (h100:1) ACTIVE" "$(os server show "$gpu_a" -f value -c status 2>/dev/null || echo none)" ACTIVE
gpu_b=$(value osc server create --flavor gpu2 --image "$(j image_name)" --nic "net-id=$net_id" \
  --tag "$tag" --wait st-gpu-b -f value -c id) || gpu_b=
expect_eq "server gpu2 (h100:2) ACTIVE" "$(os server show "$gpu_b" -f value -c status 2>/dev/null || echo none)" ACTIVE
gpu_c=$(osc server create --flavor gpu1 --image "$(j image_name)" --nic "net-id=$net_id" \
  --wait st-gpu-c -f value -c id 2>/dev/null || true)
[ -n "$gpu_c" ] || gpu_c=$(os server list --name '^st-gpu-c$' -f value -c ID | head -n1)
expect_eq "a 4th GPU goes to ERROR" "$(os server show "$gpu_c" -f value -c status 2>/dev/null || echo none)" ERROR
expect_in "its fault says No valid host" "$(os server show "$gpu_c" -f json 2>&1)" "No valid host"

servers=()
for s in "$srv_id" "$gpu_a" "$gpu_b" "$gpu_c"; do if [ -n "$s" ]; then servers+=("$s"); fi; done
check "server delete --wait (${#servers[@]} servers)" os server delete --wait "${servers[@]}"
expect_eq "no server left" "$(os server list -f value -c ID)" ""
expect_eq "no port left but the one we made" "$(os port list --network "$net_id" --device-owner compute:nova -f value -c ID)" ""
check "floating ip delete" os floating ip delete "$fip"
check "port delete" os port delete "$port_id"
check "router remove subnet, unset gateway, delete" bash -c "
  $venv/bin/openstack router remove subnet $router_id $subnet_id &&
  $venv/bin/openstack router unset --external-gateway $router_id &&
  $venv/bin/openstack router delete $router_id"
check "security group delete" os security group delete "$sg_id"
check "network delete" os network delete "$net_id"
check "keypair delete" os keypair delete st-key

# --- tokens ---------------------------------------------------------------------------
if [ -n "$early_token" ] && [ "$token_expiration" -le 300 ]; then
  elapsed=$((SECONDS - t_start))
  if [ "$elapsed" -le "$token_expiration" ]; then sleep $((token_expiration - elapsed + 3)); fi
  code=$("$py" -c '
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"X-Auth-Token": sys.argv[2], "X-Subject-Token": sys.argv[2]})
try:
    print(urllib.request.urlopen(req, timeout=30).status)
except urllib.error.HTTPError as e:
    print(e.code)' "$keystone_url/auth/tokens" "$early_token")
  expect_eq "a token is rejected after ${token_expiration} s (GET /v3/auth/tokens)" "$code" 401
  check "a new token is issued (and works)" os network list
fi
check "admin cloud works ($admin_cloud: hypervisor list)" os --os-cloud "$admin_cloud" hypervisor list

echo "selftest: $passed passed, $failed failed ($((SECONDS - t_start)) s)" >&2
[ "$failed" = 0 ]
