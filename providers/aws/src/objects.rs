//! Each resource type on EC2: describe (all of the stack's objects of a type at once),
//! plan, create/update, delete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, Filter, InstanceStateName, InstanceType, IpPermission,
    IpRange, ResourceType, Tag, TagSpecification, VolumeType,
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use strata_provider_sdk::{
    ApplyRequest, DeleteRequest, Diagnostic, ImportRequest, PlanRequest, PlanResponse, PlannedAction, ReadRequest,
    ResourceState, diff, unknown,
};

use crate::Site;

/// The tag naming the stack that owns an object.
pub(crate) const STACK_TAG: &str = "strata:stack";
/// The tag naming the address of an object.
pub(crate) const ADDRESS_TAG: &str = "strata:address";

/// Every page of a paginated `Describe*` call (each page is one API call).
macro_rules! pages {
    ($request:expr, $what:expr) => {{
        let mut stream = $request.into_paginator().send();
        let mut all = Vec::new();
        while let Some(page) = stream.next().await {
            all.push(page.map_err(|e| error($what, e))?);
        }
        all
    }};
}

/// One object as EC2 describes it.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) id: String,
    pub(crate) address: Option<String>,
    /// Spec-shaped live values (every field the type has).
    pub(crate) spec: Map<String, Value>,
    pub(crate) outputs: Value,
}

fn error<E>(what: &str, e: SdkError<E>) -> Diagnostic
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => matches!(
            s.err().code(),
            Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "InternalError" | "Unavailable")
        ),
        _ => false,
    };
    let code = e.code().map(String::from);
    let message = e.message().map(String::from);
    let summary = match (code, message) {
        (Some(code), Some(message)) => format!("{what}: {code}: {message}"),
        _ => format!("{what}: {}", DisplayErrorContext(&e)),
    };
    let d = Diagnostic::error(summary);
    if transient { d.transient() } else { d }
}

fn text<'a>(spec: &'a Value, field: &str) -> Option<&'a str> {
    spec.get(field).and_then(Value::as_str)
}

fn user_tags(site: &Site, tags: &[Tag]) -> Value {
    let mut out = Map::new();
    for t in tags {
        let (Some(k), Some(v)) = (t.key(), t.value()) else { continue };
        if k.starts_with("strata:") || site.default_tags.get(k).is_some_and(|d| d == v) {
            continue;
        }
        out.insert(k.to_string(), json!(v));
    }
    Value::Object(out)
}

fn address_of(tags: &[Tag]) -> Option<String> {
    tags.iter().find(|t| t.key() == Some(ADDRESS_TAG)).and_then(|t| t.value()).map(String::from)
}

/// Every tag an object of `address` gets: the user's, the site's defaults, ownership.
fn all_tags(site: &Site, address: &str, spec: &Value) -> Vec<Tag> {
    let mut tags: BTreeMap<String, String> = site.default_tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(Value::Object(user)) = spec.get("tags") {
        for (k, v) in user {
            tags.insert(k.clone(), v.as_str().map(String::from).unwrap_or_else(|| v.to_string()));
        }
    }
    tags.insert(STACK_TAG.into(), site.stack.clone());
    tags.insert(ADDRESS_TAG.into(), address.to_string());
    tags.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn tag_spec(site: &Site, kind: ResourceType, address: &str, spec: &Value) -> TagSpecification {
    TagSpecification::builder().resource_type(kind).set_tags(Some(all_tags(site, address, spec))).build()
}

fn stack_filter(site: &Site) -> Filter {
    Filter::builder().name(format!("tag:{STACK_TAG}")).values(site.stack.clone()).build()
}

/// A token that is the same for the same address and spec: a retried create returns the
/// object the first attempt made.
fn client_token(address: &str, spec: &Value) -> String {
    let digest = Sha256::digest(format!("{address}\n{spec}").as_bytes());
    digest.iter().take(24).map(|b| format!("{b:02x}")).collect()
}

fn kind(resource_type: &str) -> Result<&'static str, Diagnostic> {
    crate::TYPES
        .iter()
        .find(|(name, _, _)| *name == resource_type)
        .map(|(name, _, _)| *name)
        .ok_or_else(|| Diagnostic::error(format!("the aws provider has no resource type `{resource_type}`")))
}

/// Every object of the stack of one type, from one `Describe*` call (cached).
async fn describe_all(site: &Site, resource_type: &'static str) -> Result<Arc<Vec<Live>>, Diagnostic> {
    let mut cache = site.cache.lock().await;
    if let Some(found) = cache.get(resource_type) {
        return Ok(found.clone());
    }
    if resource_type == "aws.volume" || resource_type == "aws.volume_attachment" {
        // One DescribeVolumes answers both: the volumes and their attachments.
        let (volumes, attachments) = describe_volumes(site, Some(stack_filter(site)), None).await?;
        let (volumes, attachments) = (Arc::new(volumes), Arc::new(attachments));
        cache.insert("aws.volume", volumes.clone());
        cache.insert("aws.volume_attachment", attachments.clone());
        return Ok(if resource_type == "aws.volume" { volumes } else { attachments });
    }
    let found = Arc::new(describe(site, resource_type, Some(stack_filter(site)), None).await?);
    cache.insert(resource_type, found.clone());
    Ok(found)
}

fn bool_value(v: Option<bool>) -> Value {
    v.map(Value::Bool).unwrap_or(Value::Null)
}

/// Describes objects of a type, by filter or by id.
async fn describe(
    site: &Site,
    resource_type: &str,
    filter: Option<Filter>,
    id: Option<&str>,
) -> Result<Vec<Live>, Diagnostic> {
    let c = &site.client;
    let mut out = Vec::new();
    match resource_type {
        "aws.vpc" => {
            let r = c.describe_vpcs().set_filters(filter.map(|f| vec![f])).set_vpc_ids(id.map(|i| vec![i.to_string()]));
            let r = pages!(r, "DescribeVpcs");
            for v in r.iter().flat_map(|p| p.vpcs()) {
                let id = v.vpc_id().unwrap_or_default().to_string();
                let mut spec = Map::new();
                spec.insert("cidrBlock".into(), json!(v.cidr_block()));
                spec.insert("tags".into(), user_tags(site, v.tags()));
                out.push(Live {
                    outputs: json!({"id": id, "cidrBlock": v.cidr_block()}),
                    id,
                    address: address_of(v.tags()),
                    spec,
                });
            }
        }
        "aws.subnet" => {
            let r = c
                .describe_subnets()
                .set_filters(filter.map(|f| vec![f]))
                .set_subnet_ids(id.map(|i| vec![i.to_string()]));
            let r = pages!(r, "DescribeSubnets");
            for s in r.iter().flat_map(|p| p.subnets()) {
                let id = s.subnet_id().unwrap_or_default().to_string();
                let mut spec = Map::new();
                spec.insert("vpcId".into(), json!(s.vpc_id()));
                spec.insert("cidrBlock".into(), json!(s.cidr_block()));
                spec.insert("availabilityZone".into(), json!(s.availability_zone()));
                spec.insert("mapPublicIpOnLaunch".into(), bool_value(s.map_public_ip_on_launch()));
                spec.insert("tags".into(), user_tags(site, s.tags()));
                out.push(Live {
                    outputs: json!({"id": id, "availabilityZone": s.availability_zone(), "cidrBlock": s.cidr_block()}),
                    id,
                    address: address_of(s.tags()),
                    spec,
                });
            }
        }
        "aws.internet_gateway" => {
            let r = c
                .describe_internet_gateways()
                .set_filters(filter.map(|f| vec![f]))
                .set_internet_gateway_ids(id.map(|i| vec![i.to_string()]));
            let r = pages!(r, "DescribeInternetGateways");
            for g in r.iter().flat_map(|p| p.internet_gateways()) {
                let id = g.internet_gateway_id().unwrap_or_default().to_string();
                let mut spec = Map::new();
                spec.insert("vpcId".into(), json!(g.attachments().first().and_then(|a| a.vpc_id())));
                spec.insert("tags".into(), user_tags(site, g.tags()));
                out.push(Live { outputs: json!({"id": id}), id, address: address_of(g.tags()), spec });
            }
        }
        "aws.route_table" => {
            let r = c
                .describe_route_tables()
                .set_filters(filter.map(|f| vec![f]))
                .set_route_table_ids(id.map(|i| vec![i.to_string()]));
            let r = pages!(r, "DescribeRouteTables");
            for t in r.iter().flat_map(|p| p.route_tables()) {
                let id = t.route_table_id().unwrap_or_default().to_string();
                let mut routes: Vec<Value> = t
                    .routes()
                    .iter()
                    .filter(|r| r.gateway_id() != Some("local"))
                    .filter_map(|r| {
                        Some(json!({"destinationCidrBlock": r.destination_cidr_block()?, "gatewayId": r.gateway_id()?}))
                    })
                    .collect();
                routes.sort_by_key(|r| r.to_string());
                let mut subnets: Vec<String> =
                    t.associations().iter().filter_map(|a| a.subnet_id().map(String::from)).collect();
                subnets.sort();
                let mut spec = Map::new();
                spec.insert("vpcId".into(), json!(t.vpc_id()));
                spec.insert("routes".into(), json!(routes));
                spec.insert("subnetIds".into(), json!(subnets));
                spec.insert("tags".into(), user_tags(site, t.tags()));
                out.push(Live { outputs: json!({"id": id}), id, address: address_of(t.tags()), spec });
            }
        }
        "aws.security_group" => {
            let r = c
                .describe_security_groups()
                .set_filters(filter.map(|f| vec![f]))
                .set_group_ids(id.map(|i| vec![i.to_string()]));
            let r = pages!(r, "DescribeSecurityGroups");
            for g in r.iter().flat_map(|p| p.security_groups()) {
                let id = g.group_id().unwrap_or_default().to_string();
                let mut spec = Map::new();
                spec.insert("vpcId".into(), json!(g.vpc_id()));
                spec.insert("groupName".into(), json!(g.group_name()));
                spec.insert("description".into(), json!(g.description()));
                spec.insert("ingress".into(), json!(rules_of(g.ip_permissions())));
                spec.insert("tags".into(), user_tags(site, g.tags()));
                out.push(Live { outputs: json!({"id": id}), id, address: address_of(g.tags()), spec });
            }
        }
        "aws.key_pair" => {
            let r = c
                .describe_key_pairs()
                .set_filters(filter.map(|f| vec![f]))
                .set_key_pair_ids(id.map(|i| vec![i.to_string()]));
            let r = r.send().await.map_err(|e| error("DescribeKeyPairs", e))?;
            for k in r.key_pairs() {
                let id = k.key_pair_id().unwrap_or_default().to_string();
                let mut spec = Map::new();
                spec.insert("keyName".into(), json!(k.key_name()));
                spec.insert("tags".into(), user_tags(site, k.tags()));
                out.push(Live {
                    outputs: json!({"id": id, "keyName": k.key_name(), "fingerprint": k.key_fingerprint()}),
                    id,
                    address: address_of(k.tags()),
                    spec,
                });
            }
        }
        "aws.instance" => {
            let states = Filter::builder()
                .name("instance-state-name")
                .set_values(Some(vec!["pending".into(), "running".into(), "stopping".into(), "stopped".into()]))
                .build();
            let mut filters = vec![states];
            filters.extend(filter);
            let r = c.describe_instances().set_filters(Some(filters)).set_instance_ids(id.map(|i| vec![i.to_string()]));
            let r = pages!(r, "DescribeInstances");
            for i in r.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()) {
                let id = i.instance_id().unwrap_or_default().to_string();
                let mut groups: Vec<String> =
                    i.security_groups().iter().filter_map(|g| g.group_id().map(String::from)).collect();
                groups.sort();
                let mut spec = Map::new();
                spec.insert("imageId".into(), json!(i.image_id()));
                spec.insert("instanceType".into(), json!(i.instance_type().map(|t| t.as_str())));
                spec.insert("subnetId".into(), json!(i.subnet_id()));
                spec.insert("securityGroupIds".into(), json!(groups));
                spec.insert("keyName".into(), json!(i.key_name()));
                spec.insert("tags".into(), user_tags(site, i.tags()));
                let az = i.placement().and_then(|p| p.availability_zone());
                out.push(Live {
                    outputs: json!({"id": id, "privateIp": i.private_ip_address(), "availabilityZone": az}),
                    id,
                    address: address_of(i.tags()),
                    spec,
                });
            }
        }
        "aws.volume" | "aws.volume_attachment" => {
            let (volumes, attachments) = describe_volumes(site, filter, id).await?;
            out = if resource_type == "aws.volume" { volumes } else { attachments };
        }
        other => return Err(Diagnostic::error(format!("the aws provider has no resource type `{other}`"))),
    }
    Ok(out)
}

/// Volumes, and the attachments of those volumes (`volume:instance`; attachments carry
/// no tags of their own, so they are matched by id).
async fn describe_volumes(
    site: &Site,
    filter: Option<Filter>,
    id: Option<&str>,
) -> Result<(Vec<Live>, Vec<Live>), Diagnostic> {
    let request = site
        .client
        .describe_volumes()
        .set_filters(filter.map(|f| vec![f]))
        .set_volume_ids(id.map(|i| vec![i.to_string()]));
    let r = pages!(request, "DescribeVolumes");
    let (mut volumes, mut attachments) = (Vec::new(), Vec::new());
    for v in r.iter().flat_map(|p| p.volumes()) {
        let volume_id = v.volume_id().unwrap_or_default().to_string();
        let mut spec = Map::new();
        spec.insert("availabilityZone".into(), json!(v.availability_zone()));
        spec.insert("size".into(), json!(v.size()));
        spec.insert("volumeType".into(), json!(v.volume_type().map(|t| t.as_str())));
        spec.insert("tags".into(), user_tags(site, v.tags()));
        for a in v.attachments() {
            let instance = a.instance_id().unwrap_or_default();
            let attachment_id = format!("{volume_id}:{instance}");
            let mut spec = Map::new();
            spec.insert("volumeId".into(), json!(volume_id));
            spec.insert("instanceId".into(), json!(instance));
            spec.insert("device".into(), json!(a.device()));
            attachments.push(Live { outputs: json!({"id": attachment_id}), id: attachment_id, address: None, spec });
        }
        volumes.push(Live {
            outputs: json!({"id": volume_id, "availabilityZone": v.availability_zone()}),
            id: volume_id,
            address: address_of(v.tags()),
            spec,
        });
    }
    Ok((volumes, attachments))
}

/// Rules as one entry per (protocol, ports, CIDR): EC2 merges rules that share protocol
/// and ports, so entries are what both sides can be compared by.
fn rules_of(permissions: &[IpPermission]) -> Vec<Value> {
    let mut rules = Vec::new();
    for p in permissions {
        let protocol = p.ip_protocol().unwrap_or("-1");
        let (from, to) = if protocol == "-1" { (None, None) } else { (p.from_port(), p.to_port()) };
        for cidr in p.ip_ranges().iter().filter_map(|r| r.cidr_ip()) {
            rules.push(json!({"protocol": protocol, "fromPort": from, "toPort": to, "cidrBlocks": [cidr]}));
        }
    }
    rules.sort_by_key(|r| r.to_string());
    rules.dedup();
    rules
}

/// Normalizes desired rules the way [`rules_of`] reads them back.
fn normalize_rules(rules: Option<&Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for r in rules.and_then(Value::as_array).into_iter().flatten() {
        let protocol = r.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
        // "All traffic" has no ports, however the spec writes them.
        let (from, to) = if protocol == "-1" {
            (Value::Null, Value::Null)
        } else {
            let from = r.get("fromPort").cloned().unwrap_or(Value::Null);
            (from.clone(), r.get("toPort").cloned().unwrap_or(from))
        };
        for cidr in r.get("cidrBlocks").and_then(Value::as_array).into_iter().flatten() {
            out.push(json!({"protocol": protocol, "fromPort": from, "toPort": to, "cidrBlocks": [cidr]}));
        }
    }
    out.sort_by_key(|r| r.to_string());
    out.dedup();
    out
}

/// The desired spec in the shape EC2 describes (lists sorted, defaults filled).
fn normalize(resource_type: &str, desired: &Value) -> Value {
    let mut d = desired.clone();
    if let Value::Object(map) = &mut d {
        match resource_type {
            "aws.security_group" => {
                map.insert("ingress".into(), json!(normalize_rules(desired.get("ingress"))));
            }
            "aws.instance" => {
                if let Some(Value::Array(groups)) = map.get_mut("securityGroupIds") {
                    groups.sort_by_key(|g| g.to_string());
                }
            }
            "aws.route_table" => {
                if let Some(Value::Array(routes)) = map.get_mut("routes") {
                    // The same key order as described routes, so sorting by text compares.
                    for r in routes.iter_mut() {
                        *r = json!({"destinationCidrBlock": r.get("destinationCidrBlock"), "gatewayId": r.get("gatewayId")});
                    }
                    routes.sort_by_key(|r| r.to_string());
                }
                if let Some(Value::Array(subnets)) = map.get_mut("subnetIds") {
                    subnets.sort_by_key(|s| s.to_string());
                }
            }
            _ => {}
        }
    }
    d
}

/// Keeps the live fields the desired spec speaks about. A field equal to the desired one
/// once both are normalized (rule order, how EC2 writes "all ports") is shown as the spec
/// writes it, so the plan shows only real differences.
fn shaped(resource_type: &str, live: &Live, raw: &Value) -> Value {
    let normalized = normalize(resource_type, raw);
    let mut out = Map::new();
    for (k, v) in &live.spec {
        let Some(wanted) = normalized.get(k) else { continue };
        let same = v == wanted;
        out.insert(k.clone(), if same { raw.get(k).cloned().unwrap_or(Value::Null) } else { v.clone() });
    }
    Value::Object(out)
}

fn state_of(resource_type: &str, live: &Live, raw: &Value) -> ResourceState {
    ResourceState {
        id: live.id.clone(),
        spec: shaped(resource_type, live, raw),
        outputs: live.outputs.clone(),
        private: Value::Null,
    }
}

/// Fields EC2 does not describe back are taken from what was last applied (kept in the
/// state's private data).
fn with_applied(mut state: ResourceState, resource_type: &str, prior: Option<&ResourceState>) -> ResourceState {
    let Some(prior) = prior else { return state };
    if let Value::Object(spec) = &mut state.spec {
        for field in write_only(resource_type) {
            if let Some(v) = prior.private.get(*field) {
                spec.insert(field.to_string(), v.clone());
            }
        }
    }
    state.private = prior.private.clone();
    // The GPU info of an instance comes from its type, checked when it was made.
    if resource_type == "aws.instance"
        && let (Some(gpus), Value::Object(outputs)) = (prior.outputs.get("gpus"), &mut state.outputs)
        && prior.spec.get("instanceType") == state.spec.get("instanceType")
    {
        outputs.insert("gpus".into(), gpus.clone());
    }
    state
}

/// The live state: by the recorded id, else by the address tag (adoption after a crash).
pub(crate) async fn read(site: &Site, request: &ReadRequest) -> Result<Option<ResourceState>, Diagnostic> {
    let resource_type = kind(&request.resource.resource_type)?;
    let raw = &request.spec;
    if resource_type == "aws.volume_attachment" {
        let id = match &request.prior {
            Some(p) => p.id.clone(),
            None => {
                format!("{}:{}", text(raw, "volumeId").unwrap_or_default(), text(raw, "instanceId").unwrap_or_default())
            }
        };
        let all = describe_all(site, "aws.volume_attachment").await?;
        return Ok(all.iter().find(|l| l.id == id).map(|l| state_of(resource_type, l, raw)));
    }
    let all = describe_all(site, resource_type).await?;
    let found = match &request.prior {
        Some(prior) => all.iter().find(|l| l.id == prior.id),
        None => all.iter().find(|l| l.address.as_deref() == Some(request.resource.address.as_str())),
    };
    Ok(found.map(|l| with_applied(state_of(resource_type, l, raw), resource_type, request.prior.as_ref())))
}

/// Fields that cannot change in place, per type.
fn replacing_fields(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "aws.vpc" => &["cidrBlock"],
        "aws.subnet" => &["vpcId", "cidrBlock", "availabilityZone"],
        "aws.internet_gateway" => &[],
        "aws.route_table" => &["vpcId"],
        "aws.security_group" => &["vpcId", "groupName", "description"],
        "aws.key_pair" => &["keyName", "publicKeyMaterial"],
        "aws.instance" => {
            &["imageId", "instanceType", "subnetId", "keyName", "userData", "rootVolumeSize", "securityGroupIds"]
        }
        "aws.volume" => &["availabilityZone"],
        "aws.volume_attachment" => &["volumeId", "instanceId", "device"],
        _ => &[],
    }
}

/// Fields EC2 does not describe back: compared with what was last applied.
fn write_only(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "aws.vpc" => &["enableDnsSupport", "enableDnsHostnames"],
        "aws.key_pair" => &["publicKeyMaterial"],
        "aws.instance" => &["userData", "rootVolumeSize"],
        _ => &[],
    }
}

/// The spec without the write-only fields the live side does not have.
fn strip(spec: &Value, resource_type: &str) -> Value {
    let mut spec = spec.clone();
    if let Value::Object(map) = &mut spec {
        for f in write_only(resource_type) {
            map.remove(*f);
        }
    }
    spec
}

/// Checks an instance type against `DescribeInstanceTypes`; returns its GPU info.
async fn check_instance_type(site: &Site, instance_type: &str) -> Result<Value, String> {
    let mut known = site.instance_types.lock().await;
    if let Some(result) = known.get(instance_type) {
        return result.clone();
    }
    let response = site.client.describe_instance_types().instance_types(InstanceType::from(instance_type)).send().await;
    let result = match response {
        Ok(r) => match r.instance_types().first() {
            // The emulator matches by prefix: insist on the exact name.
            Some(t) if t.instance_type().map(|t| t.as_str()) == Some(instance_type) => Ok(t
                .gpu_info()
                .map(|g| {
                    json!({
                        "count": g.gpus().iter().map(|x| x.count().unwrap_or(0)).sum::<i32>(),
                        "models": g.gpus().iter().filter_map(|x| x.name()).collect::<Vec<_>>(),
                        "memoryMib": g.total_gpu_memory_in_mib(),
                    })
                })
                .unwrap_or_else(|| json!({"count": 0, "models": [], "memoryMib": 0}))),
            _ => Err(format!("instance type `{instance_type}` is not offered in {}", site.region)),
        },
        Err(e) if e.code() == Some("InvalidInstanceType") || e.code() == Some("InvalidParameterValue") => {
            Err(format!("instance type `{instance_type}` is not offered in {}", site.region))
        }
        Err(e) => return Err(error("DescribeInstanceTypes", e).summary),
    };
    known.insert(instance_type.to_string(), result.clone());
    result
}

/// Decides the action; validates instance types.
pub(crate) async fn plan(site: &Site, request: &PlanRequest) -> PlanResponse {
    let resource_type = match kind(&request.resource.resource_type) {
        Ok(k) => k,
        Err(d) => return PlanResponse::failed(vec![d]),
    };
    let address = &request.resource.address;
    let desired = normalize(resource_type, &request.desired);
    let mut gpus = Value::Null;
    let mut problems = Vec::new();
    for field in ["cidrBlock", "destinationCidrBlock"] {
        if let Some(cidr) = text(&desired, field).filter(|c| !unknown::is_unknown_str(c))
            && !valid_cidr(cidr)
        {
            problems.push(
                Diagnostic::error(format!("`{cidr}` is not an IPv4 CIDR block"))
                    .with_field(field)
                    .with_hint("write ADDRESS/LENGTH with a length from 16 to 28, e.g. 10.0.0.0/16"),
            );
        }
    }
    for (i, rule) in desired.get("ingress").and_then(Value::as_array).into_iter().flatten().enumerate() {
        for cidr in rule.get("cidrBlocks").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !unknown::is_unknown_str(cidr) && !valid_cidr_any(cidr) {
                problems.push(
                    Diagnostic::error(format!("`{cidr}` is not an IPv4 CIDR block"))
                        .with_field(format!("ingress.{i}.cidrBlocks")),
                );
            }
        }
    }
    if !problems.is_empty() {
        return PlanResponse::failed(problems);
    }
    // A running instance's type was checked when it was made: only a new type is checked.
    let type_changes = request.current.as_ref().and_then(|c| c.spec.get("instanceType")) != desired.get("instanceType");
    if resource_type == "aws.instance"
        && type_changes
        && let Some(instance_type) = text(&desired, "instanceType").filter(|t| !unknown::is_unknown_str(t))
    {
        match check_instance_type(site, instance_type).await {
            Ok(info) => gpus = info,
            Err(message) => {
                return PlanResponse::failed(vec![
                    Diagnostic::error(message)
                        .with_field("instanceType")
                        .with_hint("`aws ec2 describe-instance-type-offerings` lists what the region offers"),
                ]);
            }
        }
    }
    let action = match &request.current {
        None => PlannedAction::Create,
        Some(current) => {
            let live = normalize(resource_type, &current.spec);
            // A write-only field with no recorded value (an adopted or imported object) cannot
            // be compared: it is not a reason to replace.
            let unknown_write_only = |f: &str| write_only(resource_type).contains(&f) && live.get(f).is_none();
            let reasons: Vec<String> = replacing_fields(resource_type)
                .iter()
                .filter(|f| desired.get(**f).is_some() && live.get(**f) != desired.get(**f) && !unknown_write_only(f))
                .map(|f| {
                    let from = live.get(*f).map(|v| v.to_string()).unwrap_or_else(|| "nothing".into());
                    format!("`{f}` cannot change in place (now {from})")
                })
                .collect();
            if !reasons.is_empty() {
                PlannedAction::Replace { reasons }
            } else if live == desired
                || write_only(resource_type).iter().all(|f| live.get(*f).is_some() || desired.get(*f).is_none())
                    && strip(&live, resource_type) == strip(&desired, resource_type)
            {
                PlannedAction::NoOp
            } else {
                PlannedAction::Update { patch: diff(&live, &desired) }
            }
        }
    };
    let planned_outputs = match (&action, &request.current) {
        (PlannedAction::NoOp | PlannedAction::Update { .. }, Some(current)) => {
            let mut outputs = current.outputs.clone();
            if resource_type == "aws.instance" {
                outputs["gpus"] = gpus.clone();
            }
            outputs
        }
        _ => {
            let mut outputs = Map::new();
            for (name, _, fields) in crate::TYPES {
                if *name == resource_type {
                    for f in *fields {
                        outputs.insert(f.to_string(), unknown::opaque(address, f));
                    }
                }
            }
            for f in ["cidrBlock", "keyName", "availabilityZone"] {
                if let Some(v) = desired.get(f).filter(|v| !unknown::contains_unknown(v))
                    && outputs.contains_key(f)
                {
                    outputs.insert(f.into(), v.clone());
                }
            }
            if resource_type == "aws.instance" && !gpus.is_null() {
                outputs.insert("gpus".into(), gpus);
            }
            Value::Object(outputs)
        }
    };
    // A create gets a token of its own, made now: a retried call of this apply returns the
    // same object, and a later create (after a destroy) is a new one.
    let private = match &action {
        PlannedAction::Create | PlannedAction::Replace { .. } => {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            json!({"clientToken": client_token(address, &json!([desired, nanos.to_string()]))})
        }
        _ => Value::Null,
    };
    PlanResponse { diagnostics: vec![], action, planned_outputs, private }
}

/// An IPv4 CIDR block as EC2 takes it for VPCs and subnets (/16 to /28).
fn valid_cidr(cidr: &str) -> bool {
    cidr.split_once('/').is_some_and(|(address, length)| {
        address.parse::<std::net::Ipv4Addr>().is_ok() && length.parse::<u8>().is_ok_and(|l| (16..=28).contains(&l))
    })
}

/// Any IPv4 CIDR block (rules, routes).
fn valid_cidr_any(cidr: &str) -> bool {
    cidr.split_once('/').is_some_and(|(address, length)| {
        address.parse::<std::net::Ipv4Addr>().is_ok() && length.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}

/// Waits until `check` says the object is ready (or the time is up).
async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<(), Diagnostic>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Diagnostic>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(Diagnostic::error(format!("timed out after 10 minutes waiting for {what}")).transient());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn set_tags(
    site: &Site,
    id: &str,
    address: &str,
    desired: &Value,
    current: Option<&ResourceState>,
) -> Result<(), Diagnostic> {
    let wanted = all_tags(site, address, desired);
    site.client
        .create_tags()
        .resources(id)
        .set_tags(Some(wanted.clone()))
        .send()
        .await
        .map_err(|e| error("CreateTags", e))?;
    let keep: BTreeSet<String> = wanted.iter().filter_map(|t| t.key().map(String::from)).collect();
    let stale: Vec<Tag> = current
        .and_then(|c| c.spec.get("tags"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| !keep.contains(*k))
        .map(|(k, _)| Tag::builder().key(k).build())
        .collect();
    if !stale.is_empty() {
        site.client
            .delete_tags()
            .resources(id)
            .set_tags(Some(stale))
            .send()
            .await
            .map_err(|e| error("DeleteTags", e))?;
    }
    Ok(())
}

/// Creates or updates.
pub(crate) async fn apply(site: &Site, request: &ApplyRequest) -> Result<ResourceState, Diagnostic> {
    let resource_type = kind(&request.resource.resource_type)?;
    let address = request.resource.address.as_str();
    let desired = normalize(resource_type, &request.desired);
    let c = &site.client;
    let current = request.current.as_ref();
    let token = request
        .private
        .get("clientToken")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| client_token(address, &desired));
    let id = match (resource_type, current) {
        (_, Some(current)) => {
            update(site, resource_type, &current.id, address, &desired, current).await?;
            current.id.clone()
        }
        ("aws.vpc", None) => {
            let r = c
                .create_vpc()
                .cidr_block(text(&desired, "cidrBlock").unwrap_or_default())
                .tag_specifications(tag_spec(site, ResourceType::Vpc, address, &desired))
                .send()
                .await
                .map_err(|e| error("CreateVpc", e))?;
            let id = r.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_string();
            vpc_attributes(site, &id, &desired).await?;
            id
        }
        ("aws.subnet", None) => {
            let r = c
                .create_subnet()
                .vpc_id(text(&desired, "vpcId").unwrap_or_default())
                .cidr_block(text(&desired, "cidrBlock").unwrap_or_default())
                .set_availability_zone(text(&desired, "availabilityZone").map(String::from))
                .tag_specifications(tag_spec(site, ResourceType::Subnet, address, &desired))
                .send()
                .await
                .map_err(|e| error("CreateSubnet", e))?;
            let id = r.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string();
            if let Some(public) = desired.get("mapPublicIpOnLaunch").and_then(Value::as_bool) {
                c.modify_subnet_attribute()
                    .subnet_id(&id)
                    .map_public_ip_on_launch(AttributeBooleanValue::builder().value(public).build())
                    .send()
                    .await
                    .map_err(|e| error("ModifySubnetAttribute", e))?;
            }
            id
        }
        ("aws.internet_gateway", None) => {
            let r = c
                .create_internet_gateway()
                .tag_specifications(tag_spec(site, ResourceType::InternetGateway, address, &desired))
                .send()
                .await
                .map_err(|e| error("CreateInternetGateway", e))?;
            let id = r.internet_gateway().and_then(|g| g.internet_gateway_id()).unwrap_or_default().to_string();
            if let Some(vpc) = text(&desired, "vpcId") {
                c.attach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map_err(|e| error("AttachInternetGateway", e))?;
            }
            id
        }
        ("aws.route_table", None) => {
            let r = c
                .create_route_table()
                .vpc_id(text(&desired, "vpcId").unwrap_or_default())
                .tag_specifications(tag_spec(site, ResourceType::RouteTable, address, &desired))
                .send()
                .await
                .map_err(|e| error("CreateRouteTable", e))?;
            let id = r.route_table().and_then(|t| t.route_table_id()).unwrap_or_default().to_string();
            sync_route_table(site, &id, &desired, None).await?;
            id
        }
        ("aws.security_group", None) => {
            let r = c
                .create_security_group()
                .group_name(text(&desired, "groupName").unwrap_or_default())
                .description(text(&desired, "description").unwrap_or("managed by strata"))
                .set_vpc_id(text(&desired, "vpcId").map(String::from))
                .tag_specifications(tag_spec(site, ResourceType::SecurityGroup, address, &desired))
                .send()
                .await
                .map_err(|e| error("CreateSecurityGroup", e))?;
            let id = r.group_id().unwrap_or_default().to_string();
            sync_rules(site, &id, &desired, &[]).await?;
            id
        }
        ("aws.key_pair", None) => {
            let r = c
                .import_key_pair()
                .key_name(text(&desired, "keyName").unwrap_or_default())
                .public_key_material(Blob::new(text(&desired, "publicKeyMaterial").unwrap_or_default().as_bytes()))
                .tag_specifications(tag_spec(site, ResourceType::KeyPair, address, &desired))
                .send()
                .await
                .map_err(|e| error("ImportKeyPair", e))?;
            r.key_pair_id().unwrap_or_default().to_string()
        }
        ("aws.instance", None) => {
            use base64::Engine as _;
            let mut run = c
                .run_instances()
                .image_id(text(&desired, "imageId").unwrap_or_default())
                .instance_type(InstanceType::from(text(&desired, "instanceType").unwrap_or_default()))
                .min_count(1)
                .max_count(1)
                .client_token(token.clone())
                .set_subnet_id(text(&desired, "subnetId").map(String::from))
                .set_key_name(text(&desired, "keyName").map(String::from))
                .set_security_group_ids(
                    desired
                        .get("securityGroupIds")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()),
                )
                .set_user_data(
                    text(&desired, "userData").map(|u| base64::engine::general_purpose::STANDARD.encode(u.as_bytes())),
                )
                .tag_specifications(tag_spec(site, ResourceType::Instance, address, &desired));
            if let Some(size) = desired.get("rootVolumeSize").and_then(Value::as_i64) {
                // The root device's name depends on the image (`/dev/xvda`, `/dev/sda1`).
                let image = text(&desired, "imageId").unwrap_or_default();
                let images =
                    c.describe_images().image_ids(image).send().await.map_err(|e| error("DescribeImages", e))?;
                let root =
                    images.images().first().and_then(|i| i.root_device_name()).unwrap_or("/dev/xvda").to_string();
                run = run.block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(root)
                        .ebs(EbsBlockDevice::builder().volume_size(size as i32).build())
                        .build(),
                );
            }
            let r = run.send().await.map_err(|e| error("RunInstances", e))?;
            let id = r.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_string();
            let check = id.clone();
            wait_for(&format!("instance {id} to run"), || async {
                // Right after a create, EC2 may not know the id yet: not an error.
                let r = match c.describe_instances().instance_ids(&check).send().await {
                    Ok(r) => r,
                    Err(e) if e.code().is_some_and(|code| code.contains("NotFound")) => return Ok(false),
                    Err(e) => return Err(error("DescribeInstances", e)),
                };
                let state =
                    r.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.state()?.name().cloned());
                match state {
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown) => {
                        Err(Diagnostic::error(format!("instance {check} terminated while starting")))
                    }
                    other => Ok(other == Some(InstanceStateName::Running)),
                }
            })
            .await?;
            id
        }
        ("aws.volume", None) => {
            let r = c
                .create_volume()
                .availability_zone(text(&desired, "availabilityZone").unwrap_or_default())
                .set_size(desired.get("size").and_then(Value::as_i64).map(|s| s as i32))
                .set_volume_type(text(&desired, "volumeType").map(VolumeType::from))
                .client_token(token.clone())
                .tag_specifications(tag_spec(site, ResourceType::Volume, address, &desired))
                .send()
                .await
                .map_err(|e| error("CreateVolume", e))?;
            let id = r.volume_id().unwrap_or_default().to_string();
            wait_volume(site, &id, "available").await?;
            id
        }
        ("aws.volume_attachment", None) => {
            let volume = text(&desired, "volumeId").unwrap_or_default();
            let instance = text(&desired, "instanceId").unwrap_or_default();
            c.attach_volume()
                .volume_id(volume)
                .instance_id(instance)
                .device(text(&desired, "device").unwrap_or("/dev/sdf"))
                .send()
                .await
                .map_err(|e| error("AttachVolume", e))?;
            wait_volume(site, volume, "in-use").await?;
            format!("{volume}:{instance}")
        }
        (other, None) => return Err(Diagnostic::error(format!("the aws provider has no resource type `{other}`"))),
    };
    site.cache.lock().await.clear();
    let lookup_type = if resource_type == "aws.volume_attachment" { "aws.volume_attachment" } else { resource_type };
    let live = if resource_type == "aws.volume_attachment" {
        describe_all(site, lookup_type).await?.iter().find(|l| l.id == id).cloned()
    } else {
        describe(site, resource_type, None, Some(&id)).await?.into_iter().next()
    };
    let live = live.ok_or_else(|| {
        Diagnostic::error(format!("{resource_type} `{id}` is gone right after it was made")).transient()
    })?;
    let mut state = state_of(resource_type, &live, &request.desired);
    // Keep what EC2 does not describe back, to compare with next time.
    let mut private = Map::new();
    for field in write_only(resource_type) {
        if let Some(v) = desired.get(*field) {
            private.insert(field.to_string(), v.clone());
        }
    }
    state.private = if private.is_empty() { Value::Null } else { Value::Object(private) };
    if resource_type == "aws.instance"
        && let Some(t) = text(&desired, "instanceType")
        && let Ok(gpus) = check_instance_type(site, t).await
    {
        state.outputs["gpus"] = gpus;
    }
    Ok(state)
}

async fn wait_volume(site: &Site, id: &str, wanted: &str) -> Result<(), Diagnostic> {
    wait_for(&format!("volume {id} to be {wanted}"), || async {
        let r = match site.client.describe_volumes().volume_ids(id).send().await {
            Ok(r) => r,
            // Right after a create, EC2 may not know the id yet: not an error.
            Err(e) if e.code().is_some_and(|code| code.contains("NotFound")) => return Ok(false),
            Err(e) => return Err(error("DescribeVolumes", e)),
        };
        Ok(r.volumes().first().and_then(|v| v.state()).map(|s| s.as_str()) == Some(wanted))
    })
    .await
}

async fn vpc_attributes(site: &Site, id: &str, desired: &Value) -> Result<(), Diagnostic> {
    for (field, dns_support) in [("enableDnsSupport", true), ("enableDnsHostnames", false)] {
        if let Some(value) = desired.get(field).and_then(Value::as_bool) {
            let flag = AttributeBooleanValue::builder().value(value).build();
            let call = site.client.modify_vpc_attribute().vpc_id(id);
            let call = if dns_support { call.enable_dns_support(flag) } else { call.enable_dns_hostnames(flag) };
            call.send().await.map_err(|e| error("ModifyVpcAttribute", e))?;
        }
    }
    Ok(())
}

fn permission(rule: &Value) -> IpPermission {
    let mut p = IpPermission::builder().ip_protocol(rule["protocol"].as_str().unwrap_or("tcp"));
    if let Some(from) = rule["fromPort"].as_i64() {
        p = p.from_port(from as i32);
    }
    if let Some(to) = rule["toPort"].as_i64() {
        p = p.to_port(to as i32);
    }
    for cidr in rule["cidrBlocks"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        p = p.ip_ranges(IpRange::builder().cidr_ip(cidr).build());
    }
    p.build()
}

/// Adds the rules the spec wants and the group lacks; removes the others.
async fn sync_rules(site: &Site, id: &str, desired: &Value, live: &[Value]) -> Result<(), Diagnostic> {
    let wanted = normalize_rules(desired.get("ingress"));
    let add: Vec<IpPermission> = wanted.iter().filter(|r| !live.contains(r)).map(permission).collect();
    let remove: Vec<IpPermission> = live.iter().filter(|r| !wanted.contains(r)).map(permission).collect();
    if !remove.is_empty() {
        site.client
            .revoke_security_group_ingress()
            .group_id(id)
            .set_ip_permissions(Some(remove))
            .send()
            .await
            .map_err(|e| error("RevokeSecurityGroupIngress", e))?;
    }
    if !add.is_empty() {
        site.client
            .authorize_security_group_ingress()
            .group_id(id)
            .set_ip_permissions(Some(add))
            .send()
            .await
            .map_err(|e| error("AuthorizeSecurityGroupIngress", e))?;
    }
    Ok(())
}

async fn sync_route_table(site: &Site, id: &str, desired: &Value, live: Option<&Value>) -> Result<(), Diagnostic> {
    let c = &site.client;
    let empty = vec![];
    let wanted_routes = desired.get("routes").and_then(Value::as_array).unwrap_or(&empty);
    let live_routes = live.and_then(|l| l.get("routes")).and_then(Value::as_array).unwrap_or(&empty);
    for r in live_routes.iter().filter(|r| !wanted_routes.contains(r)) {
        c.delete_route()
            .route_table_id(id)
            .destination_cidr_block(r["destinationCidrBlock"].as_str().unwrap_or_default())
            .send()
            .await
            .map_err(|e| error("DeleteRoute", e))?;
    }
    for r in wanted_routes.iter().filter(|r| !live_routes.contains(r)) {
        c.create_route()
            .route_table_id(id)
            .destination_cidr_block(r["destinationCidrBlock"].as_str().unwrap_or_default())
            .gateway_id(r["gatewayId"].as_str().unwrap_or_default())
            .send()
            .await
            .map_err(|e| error("CreateRoute", e))?;
    }
    let wanted_subnets = desired.get("subnetIds").and_then(Value::as_array).unwrap_or(&empty);
    let live_subnets = live.and_then(|l| l.get("subnetIds")).and_then(Value::as_array).unwrap_or(&empty);
    if live_subnets.iter().any(|s| !wanted_subnets.contains(s)) {
        let r =
            c.describe_route_tables().route_table_ids(id).send().await.map_err(|e| error("DescribeRouteTables", e))?;
        for a in r.route_tables().iter().flat_map(|t| t.associations()) {
            if let (Some(subnet), Some(association)) = (a.subnet_id(), a.route_table_association_id())
                && !wanted_subnets.iter().any(|w| w.as_str() == Some(subnet))
            {
                c.disassociate_route_table()
                    .association_id(association)
                    .send()
                    .await
                    .map_err(|e| error("DisassociateRouteTable", e))?;
            }
        }
    }
    for s in wanted_subnets.iter().filter(|s| !live_subnets.contains(s)).filter_map(Value::as_str) {
        c.associate_route_table()
            .route_table_id(id)
            .subnet_id(s)
            .send()
            .await
            .map_err(|e| error("AssociateRouteTable", e))?;
    }
    Ok(())
}

/// In-place changes: tags everywhere, plus what each type can change.
async fn update(
    site: &Site,
    resource_type: &str,
    id: &str,
    address: &str,
    desired: &Value,
    current: &ResourceState,
) -> Result<(), Diagnostic> {
    match resource_type {
        "aws.volume_attachment" => return Ok(()),
        "aws.vpc" => vpc_attributes(site, id, desired).await?,
        "aws.subnet" => {
            if let Some(public) = desired.get("mapPublicIpOnLaunch").and_then(Value::as_bool)
                && current.spec.get("mapPublicIpOnLaunch").and_then(Value::as_bool) != Some(public)
            {
                site.client
                    .modify_subnet_attribute()
                    .subnet_id(id)
                    .map_public_ip_on_launch(AttributeBooleanValue::builder().value(public).build())
                    .send()
                    .await
                    .map_err(|e| error("ModifySubnetAttribute", e))?;
            }
        }
        "aws.security_group" => {
            let live: Vec<Value> = current.spec.get("ingress").and_then(Value::as_array).cloned().unwrap_or_default();
            sync_rules(site, id, desired, &live).await?;
        }
        "aws.route_table" => sync_route_table(site, id, desired, Some(&current.spec)).await?,
        "aws.internet_gateway" => {
            let attached = text(&current.spec, "vpcId");
            let wanted = text(desired, "vpcId");
            if attached != wanted {
                if let Some(old) = attached {
                    site.client
                        .detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(old)
                        .send()
                        .await
                        .map_err(|e| error("DetachInternetGateway", e))?;
                }
                if let Some(vpc) = wanted {
                    site.client
                        .attach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await
                        .map_err(|e| error("AttachInternetGateway", e))?;
                }
            }
        }
        "aws.volume" => {
            let size = desired.get("size").and_then(Value::as_i64);
            let volume_type = text(desired, "volumeType");
            let size_changes = size.is_some() && size != current.spec.get("size").and_then(Value::as_i64);
            let type_changes = volume_type.is_some() && volume_type != text(&current.spec, "volumeType");
            if size_changes || type_changes {
                site.client
                    .modify_volume()
                    .volume_id(id)
                    .set_size(size.filter(|_| size_changes).map(|s| s as i32))
                    .set_volume_type(volume_type.filter(|_| type_changes).map(VolumeType::from))
                    .send()
                    .await
                    .map_err(|e| error("ModifyVolume", e))?;
            }
        }
        _ => {}
    }
    set_tags(site, id, address, desired, Some(current)).await
}

/// Deletes, waiting where EC2 must finish before dependents can go.
pub(crate) async fn delete(site: &Site, request: &DeleteRequest) -> Result<(), Diagnostic> {
    let resource_type = kind(&request.resource.resource_type)?;
    let id = request.current.id.as_str();
    let c = &site.client;
    let gone = |code: Option<&str>| code.is_some_and(|c| c.contains("NotFound"));
    let result = match resource_type {
        "aws.vpc" => {
            c.delete_vpc().vpc_id(id).send().await.map(|_| ()).map_err(|e| (gone(e.code()), error("DeleteVpc", e)))
        }
        "aws.subnet" => c
            .delete_subnet()
            .subnet_id(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| (gone(e.code()), error("DeleteSubnet", e))),
        "aws.internet_gateway" => {
            if let Some(vpc) = text(&request.current.spec, "vpcId") {
                let _ = c.detach_internet_gateway().internet_gateway_id(id).vpc_id(vpc).send().await;
            }
            c.delete_internet_gateway()
                .internet_gateway_id(id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| (gone(e.code()), error("DeleteInternetGateway", e)))
        }
        "aws.route_table" => {
            if let Ok(r) = c.describe_route_tables().route_table_ids(id).send().await {
                for a in r.route_tables().iter().flat_map(|t| t.associations()) {
                    if let Some(association) = a.route_table_association_id().filter(|_| a.main() != Some(true)) {
                        let _ = c.disassociate_route_table().association_id(association).send().await;
                    }
                }
            }
            c.delete_route_table()
                .route_table_id(id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| (gone(e.code()), error("DeleteRouteTable", e)))
        }
        "aws.security_group" => c
            .delete_security_group()
            .group_id(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| (gone(e.code()), error("DeleteSecurityGroup", e))),
        // By name: the emulator (and older API versions) do not take the key pair id.
        "aws.key_pair" => match text(&request.current.spec, "keyName").or(text(&request.current.outputs, "keyName")) {
            Some(name) => c.delete_key_pair().key_name(name),
            None => c.delete_key_pair().key_pair_id(id),
        }
        .send()
        .await
        .map(|_| ())
        .map_err(|e| (gone(e.code()), error("DeleteKeyPair", e))),
        "aws.instance" => {
            match c.terminate_instances().instance_ids(id).send().await {
                Ok(_) => {}
                Err(e) if gone(e.code()) => return Ok(()),
                Err(e) => return Err(error("TerminateInstances", e)),
            }
            wait_for(&format!("instance {id} to terminate"), || async {
                let r =
                    c.describe_instances().instance_ids(id).send().await.map_err(|e| error("DescribeInstances", e))?;
                let state =
                    r.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.state()?.name().cloned());
                Ok(state.is_none() || state == Some(InstanceStateName::Terminated))
            })
            .await?;
            Ok(())
        }
        "aws.volume" => c
            .delete_volume()
            .volume_id(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| (gone(e.code()), error("DeleteVolume", e))),
        "aws.volume_attachment" => {
            let spec = &request.current.spec;
            let volume = text(spec, "volumeId").unwrap_or_default();
            // The emulator (and some API versions) need the instance and device too.
            let detached = c
                .detach_volume()
                .volume_id(volume)
                .set_instance_id(text(spec, "instanceId").map(String::from))
                .set_device(text(spec, "device").map(String::from))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| (gone(e.code()) || e.code() == Some("IncorrectState"), error("DetachVolume", e)));
            if detached.is_ok() {
                wait_volume(site, volume, "available").await?;
            }
            detached
        }
        other => return Err(Diagnostic::error(format!("the aws provider has no resource type `{other}`"))),
    };
    match result {
        Ok(()) | Err((true, _)) => Ok(()),
        Err((false, d)) => Err(d),
    }
}

/// Reads an existing object by id and tags it as this stack's.
pub(crate) async fn import(site: &Site, request: &ImportRequest) -> Result<Option<ResourceState>, Diagnostic> {
    let resource_type = kind(&request.resource.resource_type)?;
    if resource_type == "aws.volume_attachment" {
        return Err(Diagnostic::error(
            "attachments are imported by importing their volume and instance, then applying",
        ));
    }
    let Some(live) = describe(site, resource_type, None, Some(&request.id)).await?.into_iter().next() else {
        return Ok(None);
    };
    let tags = vec![
        Tag::builder().key(STACK_TAG).value(site.stack.clone()).build(),
        Tag::builder().key(ADDRESS_TAG).value(request.resource.address.clone()).build(),
    ];
    site.client
        .create_tags()
        .resources(&live.id)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| error("CreateTags", e))?;
    site.cache.lock().await.clear();
    let all: Value = Value::Object(live.spec.clone());
    Ok(Some(state_of(resource_type, &live, &all)))
}
