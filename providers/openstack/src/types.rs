//! The resource types: how each maps to the OpenStack APIs, which fields change in place,
//! how the live object reads back into the shape of a spec.

use std::time::Instant;

use http::Method;
use serde_json::{Map, Value, json};
use strata_provider_sdk::*;

use crate::Site;
use crate::client::{Failure, Service};

/// A type's name, description and outputs.
pub struct TypeInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub outputs: &'static [&'static str],
}

pub const TYPES: &[TypeInfo] = &[
    TypeInfo { name: "openstack.network", description: "a Neutron network", outputs: &["id", "name"] },
    TypeInfo { name: "openstack.subnet", description: "a subnet of a network", outputs: &["id", "cidr", "gatewayIp"] },
    TypeInfo {
        name: "openstack.router",
        description: "a router with its interfaces and external gateway",
        outputs: &["id", "externalIp"],
    },
    TypeInfo {
        name: "openstack.security_group",
        description: "a security group with its rules",
        outputs: &["id", "name"],
    },
    TypeInfo { name: "openstack.keypair", description: "an SSH keypair (Nova)", outputs: &["name", "fingerprint"] },
    TypeInfo {
        name: "openstack.port",
        description: "a Neutron port",
        outputs: &["id", "ip", "fixedIps", "macAddress"],
    },
    TypeInfo {
        name: "openstack.server",
        description: "a Nova server (GPU flavors checked at plan)",
        outputs: &["id", "ip", "status", "flavor"],
    },
    TypeInfo {
        name: "openstack.floating_ip",
        description: "a floating IP, optionally on a port",
        outputs: &["id", "address"],
    },
];

/// A Neutron type: its collection, the spec fields and the API fields they map to, and the
/// fields that cannot change in place.
struct Neutron {
    collection: &'static str,
    singular: &'static str,
    fields: &'static [(&'static str, &'static str)],
    replace: &'static [&'static str],
}

const NETWORK: Neutron = Neutron {
    collection: "networks",
    singular: "network",
    fields: &[
        ("name", "name"),
        ("adminStateUp", "admin_state_up"),
        ("mtu", "mtu"),
        ("portSecurityEnabled", "port_security_enabled"),
        ("description", "description"),
    ],
    replace: &[],
};

const SUBNET: Neutron = Neutron {
    collection: "subnets",
    singular: "subnet",
    fields: &[
        ("name", "name"),
        ("networkId", "network_id"),
        ("cidr", "cidr"),
        ("ipVersion", "ip_version"),
        ("gatewayIp", "gateway_ip"),
        ("enableDhcp", "enable_dhcp"),
        ("dnsNameservers", "dns_nameservers"),
        ("allocationPools", "allocation_pools"),
        ("description", "description"),
    ],
    replace: &["networkId", "cidr", "ipVersion"],
};

const PORT: Neutron = Neutron {
    collection: "ports",
    singular: "port",
    fields: &[
        ("name", "name"),
        ("networkId", "network_id"),
        ("fixedIps", "fixed_ips"),
        ("securityGroupIds", "security_groups"),
        ("adminStateUp", "admin_state_up"),
        ("description", "description"),
    ],
    replace: &["networkId"],
};

const FLOATING_IP: Neutron = Neutron {
    collection: "floatingips",
    singular: "floatingip",
    fields: &[("floatingNetworkId", "floating_network_id"), ("portId", "port_id"), ("description", "description")],
    replace: &["floatingNetworkId"],
};

const ROUTER: Neutron = Neutron {
    collection: "routers",
    singular: "router",
    fields: &[("name", "name"), ("adminStateUp", "admin_state_up"), ("description", "description")],
    replace: &[],
};

const SECURITY_GROUP: Neutron = Neutron {
    collection: "security-groups",
    singular: "security_group",
    fields: &[("name", "name"), ("description", "description")],
    replace: &[],
};

/// Server fields that need a new server.
const SERVER_REPLACE: &[&str] =
    &["image", "flavor", "gpu", "keypair", "networks", "userData", "securityGroups", "availabilityZone"];

enum Kind {
    Neutron(&'static Neutron),
    Keypair,
    Server,
}

fn kind_of(resource_type: &str) -> Result<Kind, Diagnostic> {
    Ok(match resource_type {
        "openstack.network" => Kind::Neutron(&NETWORK),
        "openstack.subnet" => Kind::Neutron(&SUBNET),
        "openstack.port" => Kind::Neutron(&PORT),
        "openstack.floating_ip" => Kind::Neutron(&FLOATING_IP),
        "openstack.router" => Kind::Neutron(&ROUTER),
        "openstack.security_group" => Kind::Neutron(&SECURITY_GROUP),
        "openstack.keypair" => Kind::Keypair,
        "openstack.server" => Kind::Server,
        other => return Err(Diagnostic::error(format!("the openstack provider has no type `{other}`"))),
    })
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

fn snake_to_camel(key: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn camel_to_snake(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Object keys of an API value in the spec's camelCase (recursively).
fn to_spec(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (snake_to_camel(k), to_spec(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(to_spec).collect()),
        other => other.clone(),
    }
}

/// Object keys of a spec value in the API's snake_case (recursively).
fn to_api(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (camel_to_snake(k), to_api(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(to_api).collect()),
        other => other.clone(),
    }
}

/// The part of `live` that `shape` covers (objects by key, lists by position), so values
/// the cloud fills in and the spec does not set are not drift.
fn project(live: &Value, shape: &Value) -> Value {
    match (live, shape) {
        (Value::Object(l), Value::Object(s)) => {
            Value::Object(s.iter().filter_map(|(k, sv)| l.get(k).map(|lv| (k.clone(), project(lv, sv)))).collect())
        }
        (Value::Array(l), Value::Array(s)) => Value::Array(
            l.iter()
                .enumerate()
                .map(|(i, lv)| s.get(i).map(|sv| project(lv, sv)).unwrap_or_else(|| lv.clone()))
                .collect(),
        ),
        _ => live.clone(),
    }
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Array(items) => {
            let mut items = items.clone();
            items.sort_by_key(|v| v.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str).filter(|s| !unknown::is_unknown_str(s))
}

fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

/// A security group rule in one canonical form.
fn canonical_rule(rule: &Value) -> Value {
    let field = |camel: &str, snake: &str| rule.get(camel).or_else(|| rule.get(snake)).cloned().unwrap_or(Value::Null);
    let protocol = match field("protocol", "protocol") {
        Value::Null => json!("any"),
        Value::String(p) if p == "-1" || p.is_empty() => json!("any"),
        Value::String(p) => json!(p.to_lowercase()),
        other => other,
    };
    let mut out = Map::new();
    out.insert(
        "direction".into(),
        match field("direction", "direction") {
            Value::Null => json!("ingress"),
            d => d,
        },
    );
    out.insert(
        "ethertype".into(),
        match field("ethertype", "ethertype") {
            Value::Null => json!("IPv4"),
            e => e,
        },
    );
    out.insert("protocol".into(), protocol);
    for (camel, snake) in
        [("portRangeMin", "port_range_min"), ("portRangeMax", "port_range_max"), ("remoteIpPrefix", "remote_ip_prefix")]
    {
        let v = field(camel, snake);
        if !v.is_null() {
            out.insert(camel.into(), v);
        }
    }
    Value::Object(out)
}

fn canonical_rules(rules: &[Value], with_egress: bool) -> Vec<Value> {
    let mut out: Vec<Value> =
        rules.iter().map(canonical_rule).filter(|r| with_egress || r["direction"] == "ingress").collect();
    out.sort_by_key(|v| v.to_string());
    out.dedup();
    out
}

/// Live rules written the way the spec writes them: those the spec has, in its order and
/// form, then the others without the default `direction` and `ethertype`.
fn present_rules(live: &[Value], desired: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut used = vec![false; live.len()];
    for d in desired {
        let canonical = canonical_rule(d);
        if let Some(i) = live.iter().enumerate().position(|(i, l)| !used[i] && *l == canonical) {
            used[i] = true;
            out.push(d.clone());
        }
    }
    for (i, l) in live.iter().enumerate().filter(|(i, _)| !used[*i]) {
        let _ = i;
        let mut rule = object(l);
        if rule.get("direction") == Some(&json!("ingress")) {
            rule.remove("direction");
        }
        if rule.get("ethertype") == Some(&json!("IPv4")) {
            rule.remove("ethertype");
        }
        out.push(Value::Object(rule));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Read
// ---------------------------------------------------------------------------------------

/// The live object of a resource: by the recorded id, else by its address.
async fn find(site: &Site, kind: &Kind, request: &ReadRequest) -> Result<Option<Value>, Diagnostic> {
    let prior_id = request.prior.as_ref().map(|p| p.id.clone());
    match kind {
        Kind::Neutron(n) => {
            let list = site.list_neutron(n.collection).await?;
            let tag = Site::address_tag(&request.resource.address);
            let found = list
                .iter()
                .find(|o| prior_id.is_some() && o.get("id").and_then(Value::as_str) == prior_id.as_deref())
                .or_else(|| {
                    list.iter().find(|o| {
                        o.get("tags")
                            .and_then(Value::as_array)
                            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(&tag)))
                    })
                })
                .cloned();
            if found.is_some() || prior_id.is_none() {
                return Ok(found);
            }
            // Recorded but not in the tagged list (its tags were removed): by id.
            let id = prior_id.unwrap_or_default();
            match site.send(Method::GET, Service::Network, &format!("{}/{id}", n.collection), &[], None).await {
                Ok(v) => Ok(v.get(n.singular).cloned()),
                Err(f) if f.is_not_found() => Ok(None),
                Err(f) => Err(f.into_diagnostic(&format!("reading {} {id}", n.singular))),
            }
        }
        Kind::Server => {
            let list = site.list_servers().await?;
            let found = list
                .iter()
                .filter(|s| s.get("status").and_then(Value::as_str) != Some("DELETED"))
                .find(|s| {
                    prior_id.is_some() && s.get("id").and_then(Value::as_str) == prior_id.as_deref()
                        || s.pointer("/metadata/strata:address").and_then(Value::as_str)
                            == Some(&request.resource.address)
                })
                .cloned();
            Ok(found)
        }
        Kind::Keypair => {
            let name =
                text(&request.spec, "name").map(String::from).or_else(|| request.prior.as_ref().map(|p| p.id.clone()));
            let Some(name) = name else { return Ok(None) };
            match site.send(Method::GET, Service::Compute, &format!("os-keypairs/{name}"), &[], None).await {
                Ok(v) => Ok(v.get("keypair").cloned()),
                Err(f) if f.is_not_found() => Ok(None),
                Err(f) => Err(f.into_diagnostic(&format!("reading keypair {name}"))),
            }
        }
    }
}

/// The interfaces' subnets of a router.
async fn router_subnets(site: &Site, router_id: &str) -> Result<Vec<Value>, Diagnostic> {
    let answer = site
        .send(
            Method::GET,
            Service::Network,
            "ports",
            &[("device_id", router_id.to_string()), ("device_owner", "network:router_interface".into())],
            None,
        )
        .await
        .map_err(|f| f.into_diagnostic("listing the router's interfaces"))?;
    let mut subnets: Vec<Value> = answer
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|p| p.get("fixed_ips").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|ip| ip.get("subnet_id").cloned())
        .collect();
    subnets.sort_by_key(|v| v.to_string());
    subnets.dedup();
    Ok(subnets)
}

/// The first fixed IP of a server.
fn server_ip(server: &Value) -> Value {
    server
        .get("addresses")
        .and_then(Value::as_object)
        .and_then(|nets| {
            nets.values().flat_map(|a| a.as_array().cloned().unwrap_or_default()).find_map(|a| a.get("addr").cloned())
        })
        .unwrap_or(Value::Null)
}

/// The live object in the shape of `desired` (every field when `desired` is `None`, for
/// import), with outputs.
async fn state_of(
    site: &Site,
    kind: &Kind,
    live: &Value,
    desired: Option<&Value>,
) -> Result<ResourceState, Diagnostic> {
    let wanted = |key: &str| desired.is_none_or(|d| d.get(key).is_some());
    let mut spec = Map::new();
    let id = live.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let outputs;
    match kind {
        Kind::Neutron(n) => {
            for (s, a) in n.fields {
                if wanted(s)
                    && let Some(v) = live.get(*a)
                {
                    let v = to_spec(v);
                    let v = match desired.and_then(|d| d.get(*s)) {
                        Some(shape) if *s == "fixedIps" => project(&v, shape),
                        _ => v,
                    };
                    spec.insert(s.to_string(), if *s == "securityGroupIds" { sorted(&v) } else { v });
                }
            }
            match n.singular {
                "router" => {
                    if wanted("externalNetworkId") {
                        spec.insert(
                            "externalNetworkId".into(),
                            live.pointer("/external_gateway_info/network_id").cloned().unwrap_or(Value::Null),
                        );
                    }
                    if wanted("subnetIds") {
                        spec.insert("subnetIds".into(), Value::Array(router_subnets(site, &id).await?));
                    }
                    outputs = json!({"id": id, "externalIp": live.pointer("/external_gateway_info/external_fixed_ips/0/ip_address").cloned().unwrap_or(Value::Null)});
                }
                "security_group" => {
                    let with_egress = desired
                        .and_then(|d| d.get("rules"))
                        .and_then(Value::as_array)
                        .is_none_or(|rules| rules.iter().any(|r| canonical_rule(r)["direction"] == "egress"));
                    let rules = live.get("security_group_rules").and_then(Value::as_array).cloned().unwrap_or_default();
                    if wanted("rules") {
                        let desired_rules =
                            desired.and_then(|d| d.get("rules")).and_then(Value::as_array).cloned().unwrap_or_default();
                        spec.insert(
                            "rules".into(),
                            Value::Array(present_rules(&canonical_rules(&rules, with_egress), &desired_rules)),
                        );
                    }
                    outputs = json!({"id": id, "name": live.get("name")});
                }
                "subnet" => outputs = json!({"id": id, "cidr": live.get("cidr"), "gatewayIp": live.get("gateway_ip")}),
                "port" => {
                    let fixed = to_spec(live.get("fixed_ips").unwrap_or(&Value::Null));
                    outputs = json!({"id": id, "ip": fixed.pointer("/0/ipAddress"), "fixedIps": fixed, "macAddress": live.get("mac_address")});
                }
                "floatingip" => outputs = json!({"id": id, "address": live.get("floating_ip_address")}),
                _ => outputs = json!({"id": id, "name": live.get("name")}),
            }
        }
        Kind::Keypair => {
            let name = live.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            spec.insert("name".into(), json!(name));
            if let Some(key) = live.get("public_key") {
                spec.insert("publicKey".into(), key.clone());
            }
            outputs = json!({"name": name, "fingerprint": live.get("fingerprint")});
            return Ok(ResourceState { id: name, spec: Value::Object(spec), outputs, private: json!({"owned": true}) });
        }
        Kind::Server => {
            let d = desired.cloned().unwrap_or(Value::Null);
            if wanted("name") {
                spec.insert("name".into(), live.get("name").cloned().unwrap_or(Value::Null));
            }
            let live_image = live.pointer("/image/id").and_then(Value::as_str).unwrap_or_default().to_string();
            let live_flavor =
                live.pointer("/flavor/original_name").and_then(Value::as_str).unwrap_or_default().to_string();
            // The spec names images and flavors as it likes (name or id): the same object
            // reads back as the spec wrote it.
            if let Some(image) = text(&d, "image") {
                let same = site.image_id(image).await.map(|id| id == live_image).unwrap_or(false);
                spec.insert("image".into(), json!(if same { image.to_string() } else { live_image.clone() }));
            } else if desired.is_none() {
                spec.insert("image".into(), json!(live_image));
            }
            let flavor = resolve_flavor(site, &d).await.ok().flatten();
            let flavor_matches =
                flavor.as_ref().is_some_and(|f| f.get("name").and_then(Value::as_str) == Some(&live_flavor));
            if d.get("flavor").is_some() {
                spec.insert("flavor".into(), if flavor_matches { d["flavor"].clone() } else { json!(live_flavor) });
            } else if desired.is_none() {
                spec.insert("flavor".into(), json!(live_flavor));
            }
            if d.get("gpu").is_some() {
                spec.insert(
                    "gpu".into(),
                    if flavor_matches { d["gpu"].clone() } else { json!({"flavor": live_flavor}) },
                );
            }
            if wanted("keypair") {
                spec.insert("keypair".into(), live.get("key_name").cloned().unwrap_or(Value::Null));
            }
            if wanted("securityGroups") {
                let mut groups: Vec<Value> = live
                    .get("security_groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.get("name").cloned())
                    .collect();
                groups.sort_by_key(|v| v.to_string());
                groups.dedup();
                spec.insert("securityGroups".into(), Value::Array(groups));
            }
            if wanted("availabilityZone") {
                spec.insert(
                    "availabilityZone".into(),
                    live.get("OS-EXT-AZ:availability_zone").cloned().unwrap_or(Value::Null),
                );
            }
            // Not readable back (user data), or fixed at creation (networks): as applied.
            for key in ["networks", "userData"] {
                if let Some(v) = d.get(key) {
                    spec.insert(key.into(), v.clone());
                }
            }
            if wanted("metadata") {
                let metadata: Map<String, Value> = object(live.get("metadata").unwrap_or(&Value::Null))
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("strata:"))
                    .collect();
                spec.insert("metadata".into(), Value::Object(metadata));
            }
            outputs = json!({"id": id, "ip": server_ip(live), "status": live.get("status"), "flavor": live_flavor});
            let private = json!({
                "status": live.get("status"),
                "fault": live.pointer("/fault/message"),
            });
            return Ok(ResourceState { id, spec: Value::Object(spec), outputs, private });
        }
    }
    Ok(ResourceState { id, spec: Value::Object(spec), outputs, private: Value::Null })
}

pub async fn read(site: &Site, request: &ReadRequest) -> Result<Option<ResourceState>, Diagnostic> {
    let kind = kind_of(&request.resource.resource_type)?;
    let Some(live) = find(site, &kind, request).await? else {
        return Ok(None);
    };
    let mut state = state_of(site, &kind, &live, Some(&request.spec)).await?;
    if let Kind::Keypair = kind {
        // Keypairs carry no tags: one that was never recorded is ours only if it holds
        // the same public key.
        let ours = request.prior.is_some() || state.spec.get("publicKey") == request.spec.get("publicKey");
        state.private = json!({"owned": ours});
    }
    Ok(Some(state))
}

// ---------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------

/// The flavor a server spec asks for: `flavor` (name or id), or the smallest flavor whose
/// `pci_passthrough:alias` gives `gpu.count` GPUs of `gpu.model`. `None` when the spec
/// names neither (or names it with an unknown value).
async fn resolve_flavor(site: &Site, spec: &Value) -> Result<Option<Value>, Diagnostic> {
    let flavors = site.flavors().await?;
    let alias_of =
        |f: &Value| f.pointer("/extra_specs/pci_passthrough:alias").and_then(Value::as_str).map(String::from);
    if let Some(name) = text(spec, "flavor") {
        let Some(flavor) = flavors.iter().find(|f| {
            f.get("id").and_then(Value::as_str) == Some(name) || f.get("name").and_then(Value::as_str) == Some(name)
        }) else {
            let names: Vec<&str> = flavors.iter().filter_map(|f| f.get("name").and_then(Value::as_str)).collect();
            return Err(Diagnostic::error(format!("no flavor `{name}` is visible to the project ({})", site.source))
                .with_field("flavor")
                .with_hint(format!("flavors here: {}", names.join(", "))));
        };
        if let Some(gpu) = spec.get("gpu") {
            let wanted = gpu_alias(site, gpu)?;
            if alias_of(flavor).as_deref() != Some(&wanted) {
                return Err(Diagnostic::error(format!(
                    "flavor `{name}` does not carry the GPUs `gpu` asks for (`pci_passthrough:alias` is {}, wanted {wanted})",
                    alias_of(flavor).map(|a| format!("{a:?}")).unwrap_or_else(|| "not set".into())
                ))
                .with_field("flavor"));
            }
        }
        return Ok(Some(flavor.clone()));
    }
    let Some(gpu) = spec.get("gpu") else { return Ok(None) };
    if unknown::contains_unknown(gpu) {
        return Ok(None);
    }
    let wanted = gpu_alias(site, gpu)?;
    let mut matching: Vec<&Value> = flavors.iter().filter(|f| alias_of(f).as_deref() == Some(&wanted)).collect();
    matching.sort_by_key(|f| (f.get("vcpus").and_then(Value::as_i64), f.get("ram").and_then(Value::as_i64)));
    match matching.first() {
        Some(f) => Ok(Some((*f).clone())),
        None => {
            let gpu_flavors: Vec<String> = flavors
                .iter()
                .filter_map(|f| Some(format!("{} ({})", f.get("name")?.as_str()?, alias_of(f)?)))
                .collect();
            Err(Diagnostic::error(format!(
                "no flavor visible to the project ({}) carries `pci_passthrough:alias` = {wanted}",
                site.source
            ))
            .with_field("gpu")
            .with_hint(if gpu_flavors.is_empty() {
                "this cloud offers no GPU flavor to the project".to_string()
            } else {
                format!("GPU flavors here: {}", gpu_flavors.join(", "))
            }))
        }
    }
}

/// `h100:2` for `{model: H100, count: 2}`: the site's `gpuAliases` name the PCI alias of a
/// model, else it is the model in lower case.
fn gpu_alias(site: &Site, gpu: &Value) -> Result<String, Diagnostic> {
    let model = gpu
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| Diagnostic::error("`gpu.model` is missing").with_field("gpu.model"))?;
    let count = gpu.get("count").and_then(Value::as_u64).unwrap_or(1);
    let alias = site.gpu_aliases.get(model).cloned().unwrap_or_else(|| model.to_lowercase());
    Ok(format!("{alias}:{count}"))
}

fn planned_outputs(resource_type: &str, address: &str, current: Option<&ResourceState>) -> Value {
    if let Some(c) = current {
        return c.outputs.clone();
    }
    let outputs = TYPES.iter().find(|t| t.name == resource_type).map(|t| t.outputs).unwrap_or(&[]);
    Value::Object(outputs.iter().map(|o| (o.to_string(), unknown::opaque(address, o))).collect())
}

/// The spec fields that differ, compared the way the cloud stores them.
fn changed_fields(desired: &Value, current: &Value) -> Vec<String> {
    let mut keys: Vec<&String> = desired.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    keys.sort();
    keys.into_iter()
        .filter(|k| {
            let d = &desired[k.as_str()];
            let c = current.get(k.as_str()).unwrap_or(&Value::Null);
            match k.as_str() {
                "securityGroupIds" | "subnetIds" | "securityGroups" => sorted(d) != sorted(c),
                "rules" => {
                    let with_egress =
                        d.as_array().is_some_and(|r| r.iter().any(|r| canonical_rule(r)["direction"] == "egress"));
                    canonical_rules(d.as_array().map(Vec::as_slice).unwrap_or(&[]), with_egress)
                        != canonical_rules(c.as_array().map(Vec::as_slice).unwrap_or(&[]), with_egress)
                }
                "fixedIps" => project(c, d) != *d,
                _ => d != c,
            }
        })
        .cloned()
        .collect()
}

fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "not set".into(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 { format!("{}...", text.chars().take(77).collect::<String>()) } else { text }
}

pub async fn plan(site: &Site, request: &PlanRequest) -> Result<PlanResponse, Diagnostic> {
    let kind = kind_of(&request.resource.resource_type)?;
    let desired = &request.desired;
    let outputs = |current| planned_outputs(&request.resource.resource_type, &request.resource.address, current);
    let respond = |action, current| PlanResponse {
        diagnostics: vec![],
        action,
        planned_outputs: outputs(current),
        private: Value::Null,
    };
    // A server's image and flavor must exist (and carry the GPUs) before anything is made.
    let check_server = || async {
        if let Some(image) = text(desired, "image") {
            site.image_id(image).await?;
        }
        resolve_flavor(site, desired).await?;
        Ok::<(), Diagnostic>(())
    };
    let Some(current) = &request.current else {
        if let Kind::Server = kind {
            check_server().await?;
        }
        return Ok(respond(PlannedAction::Create, None));
    };
    if current.private.get("owned").and_then(Value::as_bool) == Some(false) {
        return Err(Diagnostic::error(format!(
            "keypair `{}` already exists with another public key, and this stack did not make it",
            current.id
        ))
        .with_field("name")
        .with_hint(format!(
            "use another name, or take it over with `strata import {} {}` (the next apply then replaces it)",
            request.resource.address, current.id
        )));
    }
    let changed = changed_fields(desired, &current.spec);
    let replace_fields: &[&str] = match &kind {
        Kind::Neutron(n) => n.replace,
        Kind::Keypair => &["name", "publicKey"],
        Kind::Server => SERVER_REPLACE,
    };
    let mut reasons: Vec<String> = changed
        .iter()
        .filter(|f| replace_fields.contains(&f.as_str()))
        .map(|f| {
            if unknown::contains_unknown(&desired[f.as_str()]) {
                format!("`{f}` cannot change in place (its new value is known after apply)")
            } else {
                format!(
                    "`{f}` cannot change in place (now {})",
                    short(current.spec.get(f.as_str()).unwrap_or(&Value::Null))
                )
            }
        })
        .collect();
    if let Kind::Server = kind {
        if current.private.get("status").and_then(Value::as_str) == Some("ERROR") {
            let fault = current.private.get("fault").and_then(Value::as_str).unwrap_or("no fault message");
            reasons.push(format!("the server is in ERROR ({fault})"));
        }
        if !reasons.is_empty() {
            check_server().await?;
        }
    }
    if !reasons.is_empty() {
        return Ok(respond(PlannedAction::Replace { reasons }, None));
    }
    if changed.is_empty() {
        return Ok(respond(PlannedAction::NoOp, Some(current)));
    }
    Ok(respond(PlannedAction::Update { patch: diff(&current.spec, desired) }, Some(current)))
}

// ---------------------------------------------------------------------------------------
// Apply
// ---------------------------------------------------------------------------------------

/// The API body of a Neutron object's plain fields (those of `only`, when given).
fn neutron_body(n: &Neutron, desired: &Value, only: Option<&[String]>) -> Map<String, Value> {
    let mut body = Map::new();
    for (s, a) in n.fields {
        if only.is_some_and(|o| !o.iter().any(|f| f == s)) {
            continue;
        }
        if let Some(v) = desired.get(*s) {
            body.insert(a.to_string(), to_api(v));
        }
    }
    body
}

async fn neutron_apply(site: &Site, n: &'static Neutron, request: &ApplyRequest) -> Result<Value, Diagnostic> {
    let desired = &request.desired;
    let address = &request.resource.address;
    let current_spec = request.current.as_ref().map(|c| c.spec.clone());
    let changed = current_spec.as_ref().map(|c| changed_fields(desired, c));
    let mut id = request.current.as_ref().map(|c| c.id.clone());
    let mut body = neutron_body(n, desired, changed.as_deref());
    if n.singular == "router"
        && desired.get("externalNetworkId").is_some()
        && changed.as_ref().is_none_or(|c| c.iter().any(|f| f == "externalNetworkId"))
    {
        body.insert(
            "external_gateway_info".into(),
            match text(desired, "externalNetworkId") {
                Some(net) => json!({"network_id": net}),
                None => json!({}),
            },
        );
    }
    match &id {
        None => {
            // Neutron requires the IP version of a subnet; the CIDR tells it.
            if n.singular == "subnet" && !body.contains_key("ip_version") {
                let v6 = text(desired, "cidr").is_some_and(|c| c.contains(':'));
                body.insert("ip_version".into(), json!(if v6 { 6 } else { 4 }));
            }
            let made = site.create_neutron(n.collection, n.singular, body, address).await?;
            id = made.get("id").and_then(Value::as_str).map(String::from);
        }
        Some(existing) if !body.is_empty() => {
            site.invalidate(n.collection).await;
            site.send(
                Method::PUT,
                Service::Network,
                &format!("{}/{existing}", n.collection),
                &[],
                Some(json!({ n.singular: body })),
            )
            .await
            .map_err(|f| f.into_diagnostic(&format!("updating {} {existing}", n.singular)))?;
        }
        Some(_) => {}
    }
    let id = id.ok_or_else(|| Diagnostic::error(format!("the new {} came back without an id", n.singular)))?;
    match n.singular {
        "router" if desired.get("subnetIds").is_some() => {
            let wanted: Vec<String> = desired["subnetIds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            let have: Vec<String> =
                router_subnets(site, &id).await?.iter().filter_map(|v| v.as_str().map(String::from)).collect();
            for subnet in wanted.iter().filter(|s| !have.contains(s)) {
                site.send(
                    Method::PUT,
                    Service::Network,
                    &format!("routers/{id}/add_router_interface"),
                    &[],
                    Some(json!({"subnet_id": subnet})),
                )
                .await
                .map_err(|f| f.into_diagnostic(&format!("adding subnet {subnet} to router {id}")))?;
            }
            for subnet in have.iter().filter(|s| !wanted.contains(s)) {
                site.send(
                    Method::PUT,
                    Service::Network,
                    &format!("routers/{id}/remove_router_interface"),
                    &[],
                    Some(json!({"subnet_id": subnet})),
                )
                .await
                .map_err(|f| f.into_diagnostic(&format!("removing subnet {subnet} from router {id}")))?;
            }
        }
        "security_group" if desired.get("rules").is_some() => {
            let group = site
                .send(Method::GET, Service::Network, &format!("security-groups/{id}"), &[], None)
                .await
                .map_err(|f| f.into_diagnostic(&format!("reading security group {id}")))?;
            let live: Vec<Value> = group
                .pointer("/security_group/security_group_rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let desired_rules: Vec<Value> = desired["rules"].as_array().cloned().unwrap_or_default();
            let with_egress = desired_rules.iter().any(|r| canonical_rule(r)["direction"] == "egress");
            let wanted = canonical_rules(&desired_rules, with_egress);
            for rule in &live {
                let canonical = canonical_rule(rule);
                if (with_egress || canonical["direction"] == "ingress") && !wanted.contains(&canonical) {
                    let rule_id = rule.get("id").and_then(Value::as_str).unwrap_or_default();
                    match site
                        .send(Method::DELETE, Service::Network, &format!("security-group-rules/{rule_id}"), &[], None)
                        .await
                    {
                        Ok(_) => {}
                        Err(f) if f.is_not_found() => {}
                        Err(f) => return Err(f.into_diagnostic(&format!("deleting rule {rule_id}"))),
                    }
                }
            }
            let have: Vec<Value> = live.iter().map(canonical_rule).collect();
            for rule in wanted.iter().filter(|r| !have.contains(r)) {
                let mut body = Map::new();
                body.insert("security_group_id".into(), json!(id));
                for (k, v) in rule.as_object().into_iter().flatten() {
                    if k == "protocol" && v == "any" {
                        continue;
                    }
                    body.insert(camel_to_snake(k), v.clone());
                }
                site.send(
                    Method::POST,
                    Service::Network,
                    "security-group-rules",
                    &[],
                    Some(json!({"security_group_rule": body})),
                )
                .await
                .map_err(|f| f.into_diagnostic(&format!("adding rule {rule} to security group {id}")))?;
            }
        }
        _ => {}
    }
    site.invalidate(n.collection).await;
    let answer = site
        .send(Method::GET, Service::Network, &format!("{}/{id}", n.collection), &[], None)
        .await
        .map_err(|f| f.into_diagnostic(&format!("reading {} {id}", n.singular)))?;
    Ok(answer.get(n.singular).cloned().unwrap_or(Value::Null))
}

async fn keypair_apply(site: &Site, request: &ApplyRequest) -> Result<Value, Diagnostic> {
    let name = text(&request.desired, "name").unwrap_or_default().to_string();
    let body = json!({"keypair": {"name": name, "public_key": request.desired.get("publicKey")}});
    site.send(Method::POST, Service::Compute, "os-keypairs", &[], Some(body))
        .await
        .map_err(|f| f.into_diagnostic(&format!("creating keypair {name}")))?;
    let answer = site
        .send(Method::GET, Service::Compute, &format!("os-keypairs/{name}"), &[], None)
        .await
        .map_err(|f| f.into_diagnostic(&format!("reading keypair {name}")))?;
    Ok(answer.get("keypair").cloned().unwrap_or(Value::Null))
}

/// Waits until a server is ACTIVE; an ERROR (with its fault message) or the timeout is an
/// error that still returns the server, so that it is recorded.
async fn wait_active(site: &Site, id: &str) -> (Option<Value>, Option<Diagnostic>) {
    let started = Instant::now();
    let mut pause = std::time::Duration::from_millis(500);
    let mut last = None;
    loop {
        match site.send(Method::GET, Service::Compute, &format!("servers/{id}"), &[], None).await {
            Ok(answer) => {
                let server = answer.get("server").cloned().unwrap_or(Value::Null);
                match server.get("status").and_then(Value::as_str) {
                    Some("ACTIVE") => return (Some(server), None),
                    Some("ERROR") => {
                        let fault = server
                            .pointer("/fault/message")
                            .and_then(Value::as_str)
                            .unwrap_or("no fault message")
                            .to_string();
                        return (
                            Some(server),
                            Some(
                                Diagnostic::error(format!("server {id} went to ERROR: {fault}"))
                                    .with_hint("for `No valid host`: the cloud has no room for this flavor (GPUs, memory); the next plan replaces the server"),
                            ),
                        );
                    }
                    _ => last = Some(server),
                }
            }
            Err(f) if f.is_not_found() => {
                return (None, Some(Diagnostic::error(format!("server {id} disappeared while strata waited for it"))));
            }
            Err(f) => {
                let d = f.into_diagnostic(&format!("reading server {id}"));
                if !d.transient {
                    return (last, Some(d));
                }
            }
        }
        if started.elapsed() >= site.server_timeout {
            let status =
                last.as_ref().and_then(|s| s.get("status")).and_then(Value::as_str).unwrap_or("unknown").to_string();
            return (
                last,
                Some(
                    Diagnostic::error(format!(
                        "server {id} is not ACTIVE after {} s (status {status})",
                        site.server_timeout.as_secs()
                    ))
                    .with_hint("raise the site's `serverTimeout`, or look at the server with `openstack server show`"),
                ),
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(3));
    }
}

async fn server_create(site: &Site, request: &ApplyRequest) -> (Option<Value>, Option<Diagnostic>) {
    let desired = &request.desired;
    let address = &request.resource.address;
    let image = match text(desired, "image") {
        Some(image) => match site.image_id(image).await {
            Ok(id) => id,
            Err(d) => return (None, Some(d)),
        },
        None => return (None, Some(Diagnostic::error("`image` is missing").with_field("image"))),
    };
    let flavor = match resolve_flavor(site, desired).await {
        Ok(Some(f)) => f.get("id").cloned().unwrap_or(Value::Null),
        Ok(None) => {
            return (None, Some(Diagnostic::error("the server names neither `flavor` nor `gpu`").with_field("flavor")));
        }
        Err(d) => return (None, Some(d)),
    };
    let mut metadata = object(desired.get("metadata").unwrap_or(&Value::Null));
    metadata.insert("strata:stack".into(), json!(site.stack));
    metadata.insert("strata:address".into(), json!(address));
    let networks: Vec<Value> = desired
        .get("networks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|n| match (text(n, "networkId"), text(n, "portId")) {
            (_, Some(port)) => json!({"port": port}),
            (Some(net), None) => json!({"uuid": net}),
            _ => json!({}),
        })
        .collect();
    let mut server = Map::new();
    server.insert("name".into(), desired.get("name").cloned().unwrap_or(json!(address)));
    server.insert("imageRef".into(), json!(image));
    server.insert("flavorRef".into(), flavor);
    server.insert("networks".into(), if networks.is_empty() { json!("none") } else { Value::Array(networks) });
    server.insert("metadata".into(), Value::Object(metadata));
    server.insert("tags".into(), json!([site.stack_tag()]));
    if let Some(key) = text(desired, "keypair") {
        server.insert("key_name".into(), json!(key));
    }
    if let Some(groups) = desired.get("securityGroups").and_then(Value::as_array) {
        server.insert("security_groups".into(), Value::Array(groups.iter().map(|g| json!({"name": g})).collect()));
    }
    if let Some(data) = text(desired, "userData") {
        use base64::Engine as _;
        server.insert("user_data".into(), json!(base64::engine::general_purpose::STANDARD.encode(data)));
    }
    if let Some(zone) = text(desired, "availabilityZone") {
        server.insert("availability_zone".into(), json!(zone));
    }
    site.invalidate("servers").await;
    let made = match site.send(Method::POST, Service::Compute, "servers", &[], Some(json!({"server": server}))).await {
        Ok(made) => made,
        Err(f) => return (None, Some(f.into_diagnostic("creating the server"))),
    };
    let Some(id) = made.pointer("/server/id").and_then(Value::as_str).map(String::from) else {
        return (None, Some(Diagnostic::error("the new server came back without an id")));
    };
    wait_active(site, &id).await
}

async fn server_update(site: &Site, request: &ApplyRequest, current: &ResourceState) -> Result<(), Diagnostic> {
    let changed = changed_fields(&request.desired, &current.spec);
    let id = &current.id;
    if changed.iter().any(|f| f == "name") {
        site.send(
            Method::PUT,
            Service::Compute,
            &format!("servers/{id}"),
            &[],
            Some(json!({"server": {"name": request.desired["name"]}})),
        )
        .await
        .map_err(|f| f.into_diagnostic(&format!("renaming server {id}")))?;
    }
    if changed.iter().any(|f| f == "metadata") {
        let mut metadata = object(request.desired.get("metadata").unwrap_or(&Value::Null));
        metadata.insert("strata:stack".into(), json!(site.stack));
        metadata.insert("strata:address".into(), json!(request.resource.address));
        site.send(
            Method::PUT,
            Service::Compute,
            &format!("servers/{id}/metadata"),
            &[],
            Some(json!({"metadata": metadata})),
        )
        .await
        .map_err(|f| f.into_diagnostic(&format!("setting the metadata of server {id}")))?;
    }
    site.invalidate("servers").await;
    Ok(())
}

pub async fn apply(site: &Site, request: &ApplyRequest) -> (Option<ResourceState>, Vec<Diagnostic>) {
    let kind = match kind_of(&request.resource.resource_type) {
        Ok(k) => k,
        Err(d) => return (None, vec![d]),
    };
    let live = match &kind {
        Kind::Neutron(n) => neutron_apply(site, n, request).await.map(Some).map_err(|d| (None, d)),
        Kind::Keypair => keypair_apply(site, request).await.map(Some).map_err(|d| (None, d)),
        Kind::Server => match &request.current {
            None => match server_create(site, request).await {
                (server, None) => Ok(server),
                (server, Some(d)) => Err((server, d)),
            },
            Some(current) => match server_update(site, request, current).await {
                Ok(()) => {
                    match site.send(Method::GET, Service::Compute, &format!("servers/{}", current.id), &[], None).await
                    {
                        Ok(v) => Ok(v.get("server").cloned()),
                        Err(f) => Err((None, f.into_diagnostic(&format!("reading server {}", current.id)))),
                    }
                }
                Err(d) => Err((None, d)),
            },
        },
    };
    let (live, error) = match live {
        Ok(live) => (live, None),
        Err((live, d)) => (live, Some(d)),
    };
    let state = match &live {
        Some(live) => match state_of(site, &kind, live, Some(&request.desired)).await {
            Ok(state) => Some(state),
            Err(d) => return (None, vec![d]),
        },
        None => None,
    };
    (state, error.into_iter().collect())
}

// ---------------------------------------------------------------------------------------
// Delete, import
// ---------------------------------------------------------------------------------------

pub async fn delete(site: &Site, request: &DeleteRequest) -> Result<(), Diagnostic> {
    let kind = kind_of(&request.resource.resource_type)?;
    let id = &request.current.id;
    let gone = |r: Result<Value, Failure>, what: String| match r {
        Ok(_) => Ok(()),
        Err(f) if f.is_not_found() => Ok(()),
        Err(f) => Err(f.into_diagnostic(&what)),
    };
    match kind {
        Kind::Neutron(n) => {
            if n.singular == "router" {
                // Interfaces first, then the gateway goes with the router.
                for subnet in router_subnets(site, id).await? {
                    let r = site
                        .send(
                            Method::PUT,
                            Service::Network,
                            &format!("routers/{id}/remove_router_interface"),
                            &[],
                            Some(json!({"subnet_id": subnet})),
                        )
                        .await;
                    gone(r, format!("removing subnet {subnet} from router {id}"))?;
                }
            }
            site.invalidate(n.collection).await;
            let r = site.send(Method::DELETE, Service::Network, &format!("{}/{id}", n.collection), &[], None).await;
            gone(r, format!("deleting {} {id}", n.singular))
        }
        Kind::Keypair => {
            let r = site.send(Method::DELETE, Service::Compute, &format!("os-keypairs/{id}"), &[], None).await;
            gone(r, format!("deleting keypair {id}"))
        }
        Kind::Server => {
            site.invalidate("servers").await;
            let r = site.send(Method::DELETE, Service::Compute, &format!("servers/{id}"), &[], None).await;
            gone(r, format!("deleting server {id}"))?;
            let started = Instant::now();
            let mut pause = std::time::Duration::from_millis(300);
            loop {
                match site.send(Method::GET, Service::Compute, &format!("servers/{id}"), &[], None).await {
                    Err(f) if f.is_not_found() => return Ok(()),
                    Ok(v) if v.pointer("/server/status").and_then(Value::as_str) == Some("DELETED") => return Ok(()),
                    Ok(_) => {}
                    Err(f) => {
                        let d = f.into_diagnostic(&format!("reading server {id}"));
                        if !d.transient {
                            return Err(d);
                        }
                    }
                }
                if started.elapsed() >= site.server_timeout {
                    return Err(Diagnostic::error(format!(
                        "server {id} is still there {} s after it was deleted",
                        site.server_timeout.as_secs()
                    )));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

pub async fn import(site: &Site, request: &ImportRequest) -> Result<ResourceState, Diagnostic> {
    let kind = kind_of(&request.resource.resource_type)?;
    let id = &request.id;
    let address = &request.resource.address;
    let live = match &kind {
        Kind::Neutron(n) => {
            let v = site
                .send(Method::GET, Service::Network, &format!("{}/{id}", n.collection), &[], None)
                .await
                .map_err(|f| f.into_diagnostic(&format!("reading {} {id}", n.singular)))?;
            // The address holds slashes: the whole list goes in the body, not tags in the URL.
            let mut tags: Vec<Value> =
                v.pointer(&format!("/{}/tags", n.singular)).and_then(Value::as_array).cloned().unwrap_or_default();
            tags.retain(|t| {
                !t.as_str().is_some_and(|t| t.starts_with("strata-stack=") || t.starts_with("strata-address="))
            });
            tags.push(json!(site.stack_tag()));
            tags.push(json!(Site::address_tag(address)));
            site.send(
                Method::PUT,
                Service::Network,
                &format!("{}/{id}/tags", n.collection),
                &[],
                Some(json!({"tags": tags})),
            )
            .await
            .map_err(|f| f.into_diagnostic(&format!("tagging {} {id}", n.singular)))?;
            site.invalidate(n.collection).await;
            v.get(n.singular).cloned().unwrap_or(Value::Null)
        }
        Kind::Keypair => site
            .send(Method::GET, Service::Compute, &format!("os-keypairs/{id}"), &[], None)
            .await
            .map_err(|f| f.into_diagnostic(&format!("reading keypair {id}")))?
            .get("keypair")
            .cloned()
            .unwrap_or(Value::Null),
        Kind::Server => {
            let v = site
                .send(Method::GET, Service::Compute, &format!("servers/{id}"), &[], None)
                .await
                .map_err(|f| f.into_diagnostic(&format!("reading server {id}")))?;
            site.send(Method::PUT, Service::Compute, &format!("servers/{id}/tags/{}", site.stack_tag()), &[], None)
                .await
                .map_err(|f| f.into_diagnostic(&format!("tagging server {id}")))?;
            site.send(
                Method::PUT,
                Service::Compute,
                &format!("servers/{id}/metadata/strata:address"),
                &[],
                Some(json!({"meta": {"strata:address": address}})),
            )
            .await
            .map_err(|f| f.into_diagnostic(&format!("setting the metadata of server {id}")))?;
            site.invalidate("servers").await;
            v.get("server").cloned().unwrap_or(Value::Null)
        }
    };
    state_of(site, &kind, &live, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_convert_both_ways() {
        assert_eq!(snake_to_camel("port_range_min"), "portRangeMin");
        assert_eq!(camel_to_snake("securityGroupIds"), "security_group_ids");
        assert_eq!(to_api(&json!({"fixedIps": [{"subnetId": "s"}]})), json!({"fixed_ips": [{"subnet_id": "s"}]}));
    }

    #[test]
    fn rules_compare_in_one_form() {
        let desired =
            json!([{"protocol": "TCP", "portRangeMin": 22, "portRangeMax": 22, "remoteIpPrefix": "10.0.0.0/8"}]);
        let live = json!([
            {"direction": "egress", "ethertype": "IPv4", "protocol": null, "id": "a"},
            {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.0.0.0/8", "id": "b"}
        ]);
        assert!(
            changed_fields(
                &json!({"rules": desired}),
                &json!({"rules": canonical_rules(live.as_array().unwrap(), false)})
            )
            .is_empty()
        );
        let fewer = json!([{"direction": "egress", "protocol": null}]);
        assert_eq!(
            changed_fields(
                &json!({"rules": desired}),
                &json!({"rules": canonical_rules(fewer.as_array().unwrap(), false)})
            ),
            vec!["rules"]
        );
    }

    #[test]
    fn server_ip_is_the_first_fixed_address() {
        let server = json!({"addresses": {"net": [{"addr": "10.0.0.5", "version": 4}]}});
        assert_eq!(server_ip(&server), json!("10.0.0.5"));
    }
}
