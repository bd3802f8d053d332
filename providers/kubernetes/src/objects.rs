//! What the provider decides from objects alone, without a server: identities, the part of
//! a live object strata manages, the order of objects on a site, readiness.

use std::collections::HashMap;

use serde_json::{Map, Value};
use strata_provider_sdk::{SpecRef, unknown};

/// The label every object strata applies carries: the stack's name.
pub const STACK_LABEL: &str = "strata.dev/stack";
/// The annotation every object strata applies carries: its address.
pub const ADDRESS_ANNOTATION: &str = "strata.dev/address";

/// Which object a manifest is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `apps/v1`, `v1`.
    pub api_version: String,
    /// `apps`, or empty for the core group.
    pub group: String,
    /// `v1`.
    pub version: String,
    /// `Deployment`.
    pub kind: String,
    /// For namespaced objects.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl Identity {
    /// The identity of a manifest; `None` when a part of it is not known yet.
    pub fn of(manifest: &Value) -> Option<Identity> {
        let text =
            |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !unknown::is_unknown_str(s)).map(String::from);
        let api_version = text(manifest.get("apiVersion"))?;
        let kind = text(manifest.get("kind"))?;
        let metadata = manifest.get("metadata");
        let name = text(metadata.and_then(|m| m.get("name")))?;
        let namespace = match metadata.and_then(|m| m.get("namespace")) {
            None => None,
            Some(v) => Some(text(Some(v))?),
        };
        let (group, version) = split_api_version(&api_version);
        Some(Identity { api_version, group, version, kind, namespace, name })
    }

    /// The provider id: `v1/Kind/[namespace/]name` or `group/version/Kind/[namespace/]name`.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{ns}/{}", self.api_version, self.kind, self.name),
            None => format!("{}/{}/{}", self.api_version, self.kind, self.name),
        }
    }

    /// Parses an id made by [`Identity::id`] (or typed for `strata import`).
    pub fn parse(id: &str) -> Option<Identity> {
        let parts: Vec<&str> = id.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        // The core group's apiVersion is the only one without a slash: `v1`.
        let (api_version, rest) = if parts.first() == Some(&"v1") {
            (parts[0].to_string(), &parts[1..])
        } else {
            (format!("{}/{}", parts.first()?, parts.get(1)?), parts.get(2..)?)
        };
        let (kind, namespace, name) = match rest {
            [kind, name] => (kind, None, name),
            [kind, ns, name] => (kind, Some(ns.to_string()), name),
            _ => return None,
        };
        if !kind.chars().next()?.is_ascii_uppercase() {
            return None;
        }
        let (group, version) = split_api_version(&api_version);
        Some(Identity { api_version, group, version, kind: kind.to_string(), namespace, name: name.to_string() })
    }

    /// `kind namespace/name` for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// `apps/v1` → (`apps`, `v1`); `v1` → (``, `v1`).
pub fn split_api_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

/// Why an object must be replaced rather than changed: its identity moved.
pub fn identity_change(before: &Identity, after: &Identity) -> Vec<String> {
    let mut reasons = Vec::new();
    if before.group != after.group {
        reasons.push(format!("`manifest.apiVersion` cannot change its group in place (now {:?})", before.api_version));
    }
    if before.kind != after.kind {
        reasons.push(format!("`manifest.kind` cannot change in place (now {:?})", before.kind));
    }
    if before.name != after.name {
        reasons.push(format!("`manifest.metadata.name` cannot change in place (now {:?})", before.name));
    }
    if before.namespace != after.namespace {
        reasons.push(format!(
            "`manifest.metadata.namespace` cannot change in place (now {:?})",
            before.namespace.as_deref().unwrap_or("")
        ));
    }
    reasons
}

/// A label value made from a stack name: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends.
pub fn label_value(text: &str) -> String {
    let mut out: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).take(63).collect();
    while out.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.pop();
    }
    while out.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.remove(0);
    }
    out
}

/// The object to apply: the manifest with the ownership label and annotation, and the
/// namespace of a namespaced object that names none.
pub fn to_apply(manifest: &Value, stack: &str, address: &str, namespace: Option<&str>) -> Value {
    let mut object = manifest.clone();
    if let Value::Object(map) = &mut object {
        let metadata = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(metadata) = metadata {
            if let Some(ns) = namespace {
                metadata.entry("namespace").or_insert_with(|| Value::String(ns.to_string()));
            }
            let labels = metadata.entry("labels").or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(labels) = labels {
                labels.insert(STACK_LABEL.into(), Value::String(label_value(stack)));
            }
            let annotations = metadata.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(annotations) = annotations {
                annotations.insert(ADDRESS_ANNOTATION.into(), Value::String(address.to_string()));
            }
        }
    }
    object
}

/// The key an element of a list is matched by, when every element of `shape` has one.
fn list_key(shape: &[Value]) -> Option<&'static str> {
    ["name", "type", "containerPort", "mountPath"].into_iter().find(|key| {
        !shape.is_empty() && shape.iter().all(|e| e.get(key).is_some_and(|k| k.is_string() || k.is_number()))
    })
}

/// The part of `live` that `shape` (what strata applies) covers: fields other managers or
/// the server set are left out, so that they never show as drift.
pub fn project(live: &Value, shape: &Value) -> Value {
    match (live, shape) {
        (Value::Object(live), Value::Object(shape)) => {
            Value::Object(shape.iter().filter_map(|(k, s)| live.get(k).map(|l| (k.clone(), project(l, s)))).collect())
        }
        (Value::Array(live), Value::Array(shape)) => match list_key(shape) {
            Some(key) => Value::Array(
                shape
                    .iter()
                    .filter_map(|s| {
                        let wanted = s.get(key)?;
                        live.iter().find(|l| l.get(key) == Some(wanted)).map(|l| project(l, s))
                    })
                    .collect(),
            ),
            None => Value::Array(
                live.iter()
                    .enumerate()
                    .map(|(i, l)| match shape.get(i) {
                        Some(s) => project(l, s),
                        None => l.clone(),
                    })
                    .collect(),
            ),
        },
        _ => live.clone(),
    }
}

/// The union of two shapes (what strata applies now, and what it applied before).
pub fn merge_shapes(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = a.clone();
            for (k, bv) in b {
                let merged = match out.get(k) {
                    Some(av) => merge_shapes(av, bv),
                    None => bv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(aa), Value::Array(bb)) => match (list_key(aa), list_key(bb)) {
            (Some(ka), Some(kb)) if ka == kb => {
                let mut out = aa.clone();
                for be in bb {
                    match out.iter_mut().find(|ae| ae.get(ka) == be.get(ka)) {
                        Some(ae) => *ae = merge_shapes(ae, be),
                        None => out.push(be.clone()),
                    }
                }
                Value::Array(out)
            }
            _ => a.clone(),
        },
        _ => a.clone(),
    }
}

/// The manifest's kind and group, when it is a CustomResourceDefinition: the kinds it makes.
pub fn crd_defines(manifest: &Value) -> Option<(String, String)> {
    if manifest.get("kind")?.as_str()? != "CustomResourceDefinition" {
        return None;
    }
    let spec = manifest.get("spec")?;
    Some((spec.get("group")?.as_str()?.to_string(), spec.get("names")?.get("kind")?.as_str()?.to_string()))
}

/// Orders objects of one site: a Namespace before the objects in it, a
/// CustomResourceDefinition before the objects of its kind. Pairs `(dependent, dependency)`.
pub fn implied_dependencies(resources: &[SpecRef<'_>]) -> Vec<(usize, usize)> {
    let manifests: Vec<Option<&Value>> = resources
        .iter()
        .map(|r| (r.resource_type == crate::MANIFEST).then(|| r.spec.get("manifest")).flatten())
        .collect();
    let mut namespaces: HashMap<&str, usize> = HashMap::new();
    let mut crds: HashMap<(String, String), usize> = HashMap::new();
    for (i, m) in manifests.iter().enumerate() {
        let Some(m) = m else { continue };
        if m.get("kind").and_then(Value::as_str) == Some("Namespace")
            && let Some(name) = m.pointer("/metadata/name").and_then(Value::as_str)
        {
            namespaces.insert(name, i);
        }
        if let Some(defined) = crd_defines(m) {
            crds.insert(defined, i);
        }
    }
    let mut out = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        let Some(m) = m else { continue };
        if let Some(ns) = m.pointer("/metadata/namespace").and_then(Value::as_str)
            && let Some(&j) = namespaces.get(ns)
            && j != i
        {
            out.push((i, j));
        }
        if let (Some(api_version), Some(kind)) =
            (m.get("apiVersion").and_then(Value::as_str), m.get("kind").and_then(Value::as_str))
        {
            let (group, _) = split_api_version(api_version);
            if let Some(&j) = crds.get(&(group, kind.to_string()))
                && j != i
            {
                out.push((i, j));
            }
        }
    }
    out
}

/// Whether an object is ready, by the rules of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready.
    Ready,
    /// Not yet, and why.
    Waiting(String),
    /// It will not become ready (a failed Job).
    Failed(String),
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn condition_true(object: &Value, kind: &str) -> bool {
    condition(object, kind).and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
}

fn condition_text(object: &Value, kind: &str) -> String {
    match condition(object, kind) {
        None => format!("no `{kind}` condition yet"),
        Some(c) => {
            let field = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or("").to_string();
            let mut text = format!("{kind}={}", field("status"));
            if !field("reason").is_empty() {
                text.push_str(&format!(" ({})", field("reason")));
            }
            if !field("message").is_empty() {
                text.push_str(&format!(": {}", field("message")));
            }
            text
        }
    }
}

fn int(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

/// Readiness rules: CRD Established, Namespace Active, Deployment Available (for its current
/// generation), StatefulSet/DaemonSet replicas ready, Job Complete, and any other object
/// with a `Ready` condition that it is True. Objects that report nothing are ready.
pub fn readiness(object: &Value) -> Readiness {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let generation = int(object, "/metadata/generation");
    let observed = int(object, "/status/observedGeneration");
    let current = match (generation, observed) {
        (Some(g), Some(o)) => o >= g,
        (Some(_), None) => false,
        _ => true,
    };
    match kind {
        "CustomResourceDefinition" => {
            if condition_true(object, "Established") {
                Readiness::Ready
            } else {
                Readiness::Waiting(condition_text(object, "Established"))
            }
        }
        "Namespace" => match object.pointer("/status/phase").and_then(Value::as_str) {
            Some("Active") => Readiness::Ready,
            phase => Readiness::Waiting(format!("phase is {}", phase.unwrap_or("not reported yet"))),
        },
        "Deployment" => {
            if !current {
                Readiness::Waiting("the deployment controller has not seen this generation yet".into())
            } else if condition_true(object, "Available") {
                Readiness::Ready
            } else {
                Readiness::Waiting(condition_text(object, "Available"))
            }
        }
        "StatefulSet" => {
            let want = int(object, "/spec/replicas").unwrap_or(1);
            let ready = int(object, "/status/readyReplicas").unwrap_or(0);
            if current && ready >= want {
                Readiness::Ready
            } else {
                Readiness::Waiting(format!("{ready} of {want} replicas ready"))
            }
        }
        "DaemonSet" => {
            let want = int(object, "/status/desiredNumberScheduled").unwrap_or(0);
            let ready = int(object, "/status/numberReady").unwrap_or(0);
            if current && ready >= want {
                Readiness::Ready
            } else {
                Readiness::Waiting(format!("{ready} of {want} pods ready"))
            }
        }
        "Job" => {
            if condition_true(object, "Complete") {
                Readiness::Ready
            } else if condition_true(object, "Failed") {
                Readiness::Failed(condition_text(object, "Failed"))
            } else {
                Readiness::Waiting(condition_text(object, "Complete"))
            }
        }
        _ => match condition(object, "Ready") {
            None => Readiness::Ready,
            Some(ready) => {
                // The generation the condition speaks of: its own, else the status's; an
                // object that reports neither is taken at its word.
                let seen = ready.get("observedGeneration").and_then(Value::as_i64).or(observed);
                let current = match (generation, seen) {
                    (Some(g), Some(o)) => o >= g,
                    _ => true,
                };
                if condition_true(object, "Ready") && current {
                    Readiness::Ready
                } else {
                    Readiness::Waiting(condition_text(object, "Ready"))
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_round_trip() {
        for (manifest, id) in [
            (json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu"}}), "v1/Namespace/gpu"),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}}),
                "v1/ConfigMap/n/c",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"}}),
                "apps/v1/Deployment/n/d",
            ),
            (
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}),
                "rbac.authorization.k8s.io/v1/ClusterRole/r",
            ),
        ] {
            let identity = Identity::of(&manifest).unwrap();
            assert_eq!(identity.id(), id);
            assert_eq!(Identity::parse(id), Some(identity));
        }
        assert_eq!(Identity::parse("Deployment/x"), None);
        assert_eq!(Identity::parse("apps/v1/deployment/n/d"), None);
        assert_eq!(
            Identity::of(
                &json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": unknown::marker("a/b/c.d/e", "id")}})
            ),
            None
        );
    }

    #[test]
    fn projection_keeps_only_what_strata_applies() {
        let live = json!({
            "metadata": {"name": "d", "labels": {"app": "x", "other": "y"}, "resourceVersion": "7"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "sidecar", "image": "s"},
                {"name": "main", "image": "m:2", "imagePullPolicy": "IfNotPresent"}
            ]}}}
        });
        let shape = json!({
            "metadata": {"name": "d", "labels": {"app": "x"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "main", "image": "m:1"}]}}}
        });
        assert_eq!(
            project(&live, &shape),
            json!({
                "metadata": {"name": "d", "labels": {"app": "x"}},
                "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "main", "image": "m:2"}]}}}
            })
        );
        // An atomic list is compared whole.
        assert_eq!(project(&json!({"args": ["a", "b"]}), &json!({"args": ["a"]})), json!({"args": ["a", "b"]}));
    }

    #[test]
    fn shapes_merge_keyed_lists() {
        let a = json!({"spec": {"ports": [{"name": "http", "port": 80}]}, "x": 1});
        let b = json!({"spec": {"ports": [{"name": "metrics", "port": 9090}]}, "y": 2});
        assert_eq!(
            merge_shapes(&a, &b),
            json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}, "x": 1, "y": 2})
        );
    }

    #[test]
    fn namespaces_and_crds_come_first() {
        let specs = [
            json!({"manifest": {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "ns"}}}),
            json!({"manifest": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}}),
            json!({"manifest": {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "gadgets.example.com"}, "spec": {"group": "example.com", "names": {"kind": "Gadget"}}}}),
            json!({"manifest": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "elsewhere"}}}),
        ];
        let refs: Vec<SpecRef<'_>> =
            specs.iter().map(|s| SpecRef { resource_type: crate::MANIFEST, spec: s }).collect();
        let mut deps = implied_dependencies(&refs);
        deps.sort();
        assert_eq!(deps, vec![(0, 1), (0, 2)]);
    }

    #[test]
    fn readiness_rules() {
        let crd = |status: &str| json!({"kind": "CustomResourceDefinition", "status": {"conditions": [{"type": "Established", "status": status}]}});
        assert_eq!(readiness(&crd("True")), Readiness::Ready);
        assert!(matches!(readiness(&crd("False")), Readiness::Waiting(_)));
        let deployment = json!({"kind": "Deployment", "metadata": {"generation": 2}, "status": {"observedGeneration": 2,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."}]}});
        assert_eq!(
            readiness(&deployment),
            Readiness::Waiting(
                "Available=False (MinimumReplicasUnavailable): Deployment does not have minimum availability.".into()
            )
        );
        let job = json!({"kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert_eq!(readiness(&job), Readiness::Failed("Failed=True (BackoffLimitExceeded)".into()));
        assert_eq!(readiness(&json!({"kind": "ConfigMap", "data": {}})), Readiness::Ready);
        let release = json!({"kind": "HelmRelease", "metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Progressing"}]}});
        assert_eq!(readiness(&release), Readiness::Waiting("Ready=Unknown (Progressing)".into()));
        // The generation a Ready condition saw may sit in the condition itself.
        let certificate = json!({"kind": "Certificate", "metadata": {"generation": 2}, "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 2}]}});
        assert_eq!(readiness(&certificate), Readiness::Ready);
        let stale = json!({"kind": "Certificate", "metadata": {"generation": 3}, "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 2}]}});
        assert!(matches!(readiness(&stale), Readiness::Waiting(_)));
        let unversioned = json!({"kind": "Widget", "metadata": {"generation": 3}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(readiness(&unversioned), Readiness::Ready);
        assert_eq!(
            readiness(&json!({"kind": "Namespace", "status": {"phase": "Terminating"}})),
            Readiness::Waiting("phase is Terminating".into())
        );
    }

    #[test]
    fn ownership_is_added() {
        let object = to_apply(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            "my stack!",
            "s/c/kubernetes.manifest/c",
            Some("default"),
        );
        assert_eq!(object["metadata"]["namespace"], "default");
        assert_eq!(object["metadata"]["labels"][STACK_LABEL], "my-stack");
        assert_eq!(object["metadata"]["annotations"][ADDRESS_ANNOTATION], "s/c/kubernetes.manifest/c");
    }
}
