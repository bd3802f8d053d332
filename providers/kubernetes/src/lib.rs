//! The `kubernetes` provider: any Kubernetes object (`kubernetes.manifest`), applied with
//! server-side apply under the field manager `strata`, on the `kube` crate.
//!
//! - **Kinds at run time.** Each kind is looked up by discovery (one request per
//!   group-version, cached), so custom resources work as soon as their CRD is served. A kind
//!   defined by a CRD that the same plan creates is "promised": its objects are planned as
//!   creations and applied once the CRD is Established.
//! - **Plan** reads the live object and keeps only the fields strata applies (now or last
//!   time), so fields other managers or the server own never show as drift. When they
//!   differ from the manifest it asks the server for a dry-run apply: an invalid object
//!   fails the plan with the server's message, an immutable field turns the update into a
//!   replacement, and a field another manager owns is reported as a conflict (applied only
//!   with `forceConflicts: true`).
//! - **Order**: a Namespace before the objects in it and a CRD before its objects, implied
//!   from the manifests (`Provider::implied_dependencies`).
//! - **Readiness**: after applying, the provider waits (up to `timeout` seconds) for the
//!   object's kind rule: CRD Established, Namespace Active, Deployment Available, Job
//!   Complete, any `Ready` condition True (see [`objects::readiness`]).
//! - **Ownership**: every object carries the label `strata.dev/stack` and the annotation
//!   `strata.dev/address`. An object that exists without them is not taken over silently:
//!   the plan says to `strata import` it.
#![deny(missing_docs)]

pub mod objects;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiResource, Scope};
use kube::{Client, Config};
use serde::Deserialize;
use serde_json::{Value, json};
use strata_provider_sdk::*;

use objects::{Identity, Readiness};

/// The one resource type.
pub const MANIFEST: &str = "kubernetes.manifest";

/// The longest wait, in seconds (the schema allows no more).
const MAX_TIMEOUT: u64 = 86_400;

/// The `kubernetes` provider for one site (a cluster).
#[derive(Default)]
pub struct KubernetesProvider {
    site: std::sync::OnceLock<Site>,
}

const _: () = assert_provider::<KubernetesProvider>();

/// Makes a [`KubernetesProvider`]; a [`ProviderFactory`].
pub fn factory() -> Box<dyn Provider> {
    Box::new(KubernetesProvider::default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SiteConfig {
    #[serde(default)]
    kubeconfig: Option<String>,
    #[serde(default)]
    kubeconfig_content: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    field_manager: Option<String>,
    #[serde(default)]
    request_timeout: Option<u64>,
    #[serde(default)]
    max_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    manifest: Value,
    #[serde(default)]
    force_conflicts: bool,
    #[serde(default = "yes")]
    wait: bool,
    #[serde(default = "default_timeout")]
    timeout: u64,
}

fn yes() -> bool {
    true
}

fn default_timeout() -> u64 {
    300
}

/// How a kind is served.
#[derive(Debug, Clone)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

/// A configured cluster.
struct Site {
    client: Client,
    server: String,
    stack: String,
    namespace: String,
    field_manager: String,
    /// Kinds found by discovery, by (apiVersion, kind).
    kinds: tokio::sync::Mutex<HashMap<(String, String), Kind>>,
    /// Kinds (group, kind) of CRDs this run creates, and namespaces it creates: their
    /// objects cannot be checked by the server before they exist.
    promised_kinds: std::sync::Mutex<HashSet<(String, String)>>,
    promised_namespaces: std::sync::Mutex<HashSet<String>>,
    /// API requests made (printed at the end of a run with `STRATA_K8S_CALLS=1`).
    calls: std::sync::atomic::AtomicU64,
}

impl Drop for Site {
    fn drop(&mut self) {
        let calls = self.calls.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(server = %self.server, calls, "kubernetes API requests made");
        if std::env::var_os("STRATA_K8S_CALLS").is_some() {
            eprintln!("kubernetes: {calls} API requests ({})", self.server);
        }
    }
}

impl Site {
    fn count(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A failed API call as a diagnostic: the server's own message, and what to do.
    fn error(&self, what: &str, e: kube::Error) -> Diagnostic {
        match e {
            kube::Error::Api(status) => {
                let message = if status.message.is_empty() { status.reason.clone() } else { status.message.clone() };
                let d = Diagnostic::error(format!("{what}: {message}"))
                    .with_detail(format!("{} answered HTTP {} {}", self.server, status.code, status.reason));
                match status.code {
                    401 => d.with_hint("the server refused the kubeconfig's credentials: check the context's user (token or certificate)"),
                    403 => d.with_hint("the kubeconfig's user may not do this: grant it through RBAC, or use another context"),
                    409 if status.reason == "Conflict" && message.contains("conflict") => d.with_hint(
                        "another field manager owns these fields: set `forceConflicts: true` on the resource to take them over, or leave them out of the manifest",
                    ),
                    422 | 400 => d.with_field("manifest").with_hint("fix the manifest as the server says"),
                    429 | 503 | 504 => d.transient(),
                    _ => d,
                }
            }
            other => Diagnostic::error(format!("{what}: cannot reach the API server at {}", self.server))
                .with_detail(error_chain(&other))
                .with_hint("check that the cluster is up and that the kubeconfig's server address is right")
                .transient(),
        }
    }

    /// How `identity`'s kind is served; `None` when the server has no such kind.
    async fn kind(&self, identity: &Identity) -> Result<Option<Kind>, Diagnostic> {
        let key = (identity.api_version.clone(), identity.kind.clone());
        if let Some(kind) = self.kinds.lock().await.get(&key) {
            return Ok(Some(kind.clone()));
        }
        let gvk = kube::api::GroupVersionKind::gvk(&identity.group, &identity.version, &identity.kind);
        self.count();
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, caps)) => {
                let kind = Kind { resource, namespaced: caps.scope == Scope::Namespaced };
                self.kinds.lock().await.insert(key, kind.clone());
                Ok(Some(kind))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(self.error(&format!("discovery of {}", identity.api_version), e)),
        }
    }

    fn promised(&self, identity: &Identity) -> bool {
        self.promised_kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(identity.group.clone(), identity.kind.clone()))
    }

    fn unknown_kind(&self, identity: &Identity) -> Diagnostic {
        Diagnostic::error(format!(
            "the API server at {} has no kind `{}` in `{}`",
            self.server, identity.kind, identity.api_version
        ))
        .with_field("manifest.kind")
        .with_hint("check `apiVersion` and `kind`; a custom kind needs its CustomResourceDefinition first (in this stack as a `kubernetes.manifest`, or installed by its operator)")
    }

    /// The identity with the namespace a namespaced object gets when it names none, checked
    /// against the kind's scope.
    fn place(&self, mut identity: Identity, kind: &Kind) -> Result<Identity, Diagnostic> {
        match (kind.namespaced, &identity.namespace) {
            (true, None) => identity.namespace = Some(self.namespace.clone()),
            (false, Some(_)) => {
                return Err(Diagnostic::error(format!(
                    "`{}` is cluster-scoped, and the manifest gives it a namespace",
                    identity.kind
                ))
                .with_field("manifest.metadata.namespace")
                .with_hint("remove `metadata.namespace`"));
            }
            _ => {}
        }
        Ok(identity)
    }

    fn api(&self, kind: &Kind, identity: &Identity) -> Api<DynamicObject> {
        match &identity.namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    async fn get(&self, kind: &Kind, identity: &Identity) -> Result<Option<Value>, Diagnostic> {
        self.count();
        match self.api(kind, identity).get_opt(&identity.name).await {
            Ok(None) => Ok(None),
            Ok(Some(object)) => serde_json::to_value(object)
                .map(Some)
                .map_err(|e| Diagnostic::error(format!("the server's {} is not readable: {e}", identity.describe()))),
            Err(e) => Err(self.error(&format!("reading {}", identity.describe()), e)),
        }
    }

    /// Server-side apply of `object` (a dry run when `dry_run`).
    async fn apply(
        &self,
        kind: &Kind,
        identity: &Identity,
        object: &Value,
        force: bool,
        dry_run: bool,
    ) -> Result<Value, kube::Error> {
        let mut params = PatchParams::apply(&self.field_manager);
        if force {
            params = params.force();
        }
        if dry_run {
            params = params.dry_run();
        }
        self.count();
        let applied = self.api(kind, identity).patch(&identity.name, &params, &Patch::Apply(object)).await?;
        serde_json::to_value(applied).map_err(kube::Error::SerdeError)
    }

    fn owned(&self, live: &Value) -> bool {
        live.pointer(&format!("/metadata/labels/{}", objects::STACK_LABEL.replace('/', "~1"))).and_then(Value::as_str)
            == Some(objects::label_value(&self.stack).as_str())
    }
}

/// The resource's state from the live object: the manifest as far as strata applies it
/// (`shape`), the rest of the spec as requested.
fn state_of(identity: &Identity, live: &Value, request_spec: &Value, shape: &Value, private: Value) -> ResourceState {
    let mut spec = request_spec.clone();
    if let Value::Object(map) = &mut spec {
        map.insert("manifest".into(), objects::project(live, shape));
    }
    let meta = |f: &str| live.pointer(&format!("/metadata/{f}")).cloned().unwrap_or(Value::Null);
    ResourceState {
        id: identity.id(),
        spec,
        outputs: json!({
            "uid": meta("uid"),
            "name": identity.name,
            "namespace": identity.namespace,
            "apiVersion": identity.api_version,
            "kind": identity.kind,
        }),
        private,
    }
}

fn parse_spec(value: &Value) -> Result<Spec, Diagnostic> {
    serde_json::from_value(value.clone()).map_err(|e| Diagnostic::error(format!("invalid spec: {e}")))
}

fn not_configured() -> Diagnostic {
    Diagnostic::error("the kubernetes provider was not configured")
}

/// Server fields an imported object's manifest leaves out.
fn strip_server_fields(mut live: Value) -> Value {
    if let Value::Object(map) = &mut live {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            for f in ["uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"] {
                meta.remove(f);
            }
        }
    }
    live
}

impl KubernetesProvider {
    fn site(&self) -> Result<&Site, Diagnostic> {
        self.site.get().ok_or_else(not_configured)
    }

    async fn configure_site(&self, request: ConfigureRequest) -> Result<Option<usize>, Diagnostic> {
        let config: SiteConfig = serde_json::from_value(request.config.clone())
            .map_err(|e| Diagnostic::error(format!("invalid config: {e}")))?;
        let (kubeconfig, source, field) = if let Some(content) = &config.kubeconfig_content {
            let parsed = Kubeconfig::from_yaml(content).map_err(|e| {
                Diagnostic::error(format!("`kubeconfigContent` is not a kubeconfig: {}", error_chain(&e)))
                    .with_field("kubeconfigContent")
                    .with_hint("it must be the YAML of a kubeconfig (apiVersion: v1, kind: Config)")
            })?;
            (parsed, "kubeconfigContent".to_string(), "kubeconfigContent")
        } else if let Some(path) = &config.kubeconfig {
            let path = match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
                (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
                _ => request.base_dir.join(path),
            };
            let parsed = Kubeconfig::read_from(&path).map_err(|e| {
                Diagnostic::error(format!("cannot load the kubeconfig {}: {}", path.display(), error_chain(&e)))
                    .with_field("kubeconfig")
                    .with_hint("the path is relative to the stack file; it must be a kubeconfig (apiVersion: v1, kind: Config)")
            })?;
            (parsed, path.display().to_string(), "kubeconfig")
        } else {
            let parsed = Kubeconfig::read().map_err(|e| {
                Diagnostic::error(format!("no kubeconfig: {}", error_chain(&e)))
                    .with_field("kubeconfig")
                    .with_hint("set `kubeconfig` in the site's config, or KUBECONFIG, or write ~/.kube/config")
            })?;
            (parsed, "$KUBECONFIG or ~/.kube/config".to_string(), "kubeconfig")
        };
        let options = KubeConfigOptions { context: config.context.clone(), cluster: None, user: None };
        let mut client_config = Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| {
            let d = Diagnostic::error(format!("cannot use the kubeconfig ({source}): {}", error_chain(&e)));
            match &config.context {
                Some(context) => d
                    .with_field("context")
                    .with_hint(format!("check that context `{context}` exists in it (`kubectl config get-contexts`)")),
                None => d.with_field(field).with_hint("set `context`, or a current-context in the kubeconfig"),
            }
        })?;
        let timeout = Duration::from_secs(config.request_timeout.unwrap_or(30));
        client_config.read_timeout = Some(timeout);
        client_config.write_timeout = Some(timeout);
        client_config.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
        let server = client_config.cluster_url.to_string().trim_end_matches('/').to_string();
        let namespace = config.namespace.clone().unwrap_or_else(|| client_config.default_namespace.clone());
        let client = Client::try_from(client_config).map_err(|e| {
            Diagnostic::error(format!("cannot make a client for {server}: {}", error_chain(&e)))
                .with_field(field)
                .with_hint("check the kubeconfig's certificate-authority data and client certificate")
        })?;
        let site = Site {
            client,
            server,
            stack: request.stack.clone(),
            namespace,
            field_manager: config.field_manager.clone().unwrap_or_else(|| "strata".into()),
            kinds: Default::default(),
            promised_kinds: Default::default(),
            promised_namespaces: Default::default(),
            calls: Default::default(),
        };
        if self.site.set(site).is_err() {
            return Err(Diagnostic::error("the kubernetes provider was configured twice"));
        }
        Ok(Some(config.max_concurrency.unwrap_or(8)))
    }

    async fn read_object(&self, request: &ReadRequest) -> Result<Option<ResourceState>, Diagnostic> {
        let site = self.site()?;
        let prior_spec = request.prior.as_ref().map(|p| &p.spec);
        let spec = parse_spec(&request.spec).or_else(|e| prior_spec.map(parse_spec).unwrap_or(Err(e)))?;
        let prior_identity = request.prior.as_ref().and_then(|p| Identity::parse(&p.id));
        // What exists is what was applied; a manifest naming another object replaces it.
        let Some(identity) = prior_identity.clone().or_else(|| Identity::of(&spec.manifest)) else {
            return Ok(None);
        };
        let Some(kind) = site.kind(&identity).await? else {
            if prior_identity.is_some() || site.promised(&identity) {
                // Its kind is gone (the CRD was deleted), or comes with a CRD of this run.
                return Ok(None);
            }
            return Err(site.unknown_kind(&identity));
        };
        let identity = site.place(identity, &kind)?;
        let Some(live) = site.get(&kind, &identity).await? else {
            return Ok(None);
        };
        let prior_manifest = prior_spec.and_then(|s| s.get("manifest")).cloned().unwrap_or(Value::Null);
        let shape = objects::merge_shapes(&spec.manifest, &prior_manifest);
        let labelled = site.owned(&live);
        let owned = request.prior.is_some() || labelled;
        // An object that was not ready after the last apply is waited for again.
        let was_not_ready = request.prior.as_ref().is_some_and(|p| p.private.get("notReady").is_some());
        let not_ready = match objects::readiness(&live) {
            Readiness::Waiting(why) | Readiness::Failed(why) if was_not_ready && spec.wait => Some(why),
            _ => None,
        };
        // Recorded (imported) but not labelled yet: the next apply labels it.
        let unlabelled = (owned && !labelled).then_some(true);
        let private = json!({"owned": owned, "notReady": not_ready, "unlabelled": unlabelled});
        Ok(Some(state_of(&identity, &live, &request.spec, &shape, strip_nulls(private))))
    }

    async fn plan_object(
        &self,
        request: &PlanRequest,
        warnings: &mut Vec<Diagnostic>,
    ) -> Result<PlanResponse, Diagnostic> {
        let site = self.site()?;
        let spec = parse_spec(&request.desired)?;
        let manifest = &spec.manifest;
        let respond = |action: PlannedAction, outputs: Value| PlanResponse {
            diagnostics: vec![],
            action,
            planned_outputs: outputs,
            private: Value::Null,
        };
        let unknown_outputs = |identity: Option<&Identity>| {
            let address = &request.resource.address;
            json!({
                "uid": unknown::opaque(address, "uid"),
                "name": identity.map(|i| json!(i.name)).unwrap_or_else(|| unknown::opaque(address, "name")),
                "namespace": identity.and_then(|i| i.namespace.clone()).map(Value::String).unwrap_or_else(|| unknown::opaque(address, "namespace")),
                "apiVersion": identity.map(|i| json!(i.api_version)).unwrap_or_else(|| unknown::opaque(address, "apiVersion")),
                "kind": identity.map(|i| json!(i.kind)).unwrap_or_else(|| unknown::opaque(address, "kind")),
            })
        };
        let identity = Identity::of(manifest);
        if let Some(identity) = &identity {
            if let Some(defined) = objects::crd_defines(manifest) {
                site.promised_kinds.lock().unwrap_or_else(|e| e.into_inner()).insert(defined);
            }
            if identity.kind == "Namespace" && identity.group.is_empty() {
                site.promised_namespaces.lock().unwrap_or_else(|e| e.into_inner()).insert(identity.name.clone());
            }
        }
        let Some(current) = &request.current else {
            let Some(identity) = identity else {
                return Ok(respond(PlannedAction::Create, unknown_outputs(None)));
            };
            let Some(kind) = site.kind(&identity).await? else {
                if site.promised(&identity) {
                    return Ok(respond(PlannedAction::Create, unknown_outputs(Some(&identity))));
                }
                return Err(site.unknown_kind(&identity));
            };
            let identity = site.place(identity, &kind)?;
            if !unknown::contains_unknown(manifest) {
                let object =
                    objects::to_apply(manifest, &site.stack, &request.resource.address, identity.namespace.as_deref());
                if let Err(e) = site.apply(&kind, &identity, &object, spec.force_conflicts, true).await {
                    let namespace_comes = matches!(&e, kube::Error::Api(s) if s.code == 404)
                        && identity.namespace.as_ref().is_some_and(|ns| {
                            site.promised_namespaces.lock().unwrap_or_else(|e| e.into_inner()).contains(ns)
                        });
                    if !namespace_comes {
                        return Err(site.error(&format!("the server refuses {}", identity.describe()), e));
                    }
                }
            }
            return Ok(respond(PlannedAction::Create, unknown_outputs(Some(&identity))));
        };

        if current.private.get("owned").and_then(Value::as_bool) == Some(false) {
            return Err(Diagnostic::error(format!(
                "{} already exists on the cluster and was not made by this stack",
                Identity::parse(&current.id).map(|i| i.describe()).unwrap_or_else(|| current.id.clone())
            ))
            .with_hint(format!(
                "to manage it from here, run `strata import {} {}`; otherwise rename the object in the manifest",
                request.resource.address, current.id
            )));
        }
        let live_manifest = current.spec.get("manifest").cloned().unwrap_or(Value::Null);
        let update = |from: &Value, to: &Value| PlannedAction::Update { patch: diff(from, to) };
        let Some(identity) = identity else {
            return Ok(respond(update(&live_manifest, manifest), unknown_outputs(None)));
        };
        let before = Identity::parse(&current.id);
        let kind = site.kind(&identity).await?;
        let placed = match &kind {
            Some(kind) => site.place(identity.clone(), kind)?,
            None => identity.clone(),
        };
        if let Some(before) = &before {
            let reasons = objects::identity_change(before, &placed);
            if !reasons.is_empty() {
                return Ok(respond(PlannedAction::Replace { reasons }, unknown_outputs(Some(&placed))));
            }
        }
        let outputs = current.outputs.clone();
        let not_ready = current.private.get("notReady").and_then(Value::as_str);
        if current.private.get("unlabelled").and_then(Value::as_bool) == Some(true)
            && !unknown::contains_unknown(manifest)
        {
            warnings.push(Diagnostic::warning(format!(
                "{} lacks the label {}={}: apply adds it (with the fields of the manifest, under field manager {})",
                placed.describe(),
                objects::STACK_LABEL,
                objects::label_value(&site.stack),
                site.field_manager
            )));
            return Ok(respond(update(&live_manifest, manifest), outputs));
        }
        if let Some(why) = not_ready {
            warnings.push(Diagnostic::warning(format!(
                "{} was not ready after the last apply ({why}); apply waits for it again",
                placed.describe()
            )));
        }
        if unknown::contains_unknown(manifest) {
            return Ok(respond(update(&live_manifest, manifest), outputs));
        }
        if &live_manifest == manifest {
            let action = if not_ready.is_some() { update(&live_manifest, manifest) } else { PlannedAction::NoOp };
            return Ok(respond(action, outputs));
        }
        let Some(kind) = kind else {
            return Err(site.unknown_kind(&placed));
        };
        // Ask the server what applying would give: it normalizes values (quantities,
        // defaults) and knows which fields are immutable and who owns what.
        let object = objects::to_apply(manifest, &site.stack, &request.resource.address, placed.namespace.as_deref());
        match site.apply(&kind, &placed, &object, spec.force_conflicts, true).await {
            Ok(result) => {
                let shape = objects::merge_shapes(manifest, &live_manifest);
                if objects::project(&result, &shape) == live_manifest && not_ready.is_none() {
                    Ok(respond(PlannedAction::NoOp, outputs))
                } else {
                    Ok(respond(update(&live_manifest, manifest), outputs))
                }
            }
            Err(kube::Error::Api(status)) if status.code == 409 && status.message.contains("conflict") => {
                warnings.push(
                    Diagnostic::warning(format!(
                        "{} conflicts with another field manager: {}",
                        placed.describe(),
                        status.message
                    ))
                    .with_hint("apply will stop at this object: set `forceConflicts: true` to take the fields over, or leave them out of the manifest"),
                );
                Ok(respond(update(&live_manifest, manifest), outputs))
            }
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("immutable") => Ok(respond(
                PlannedAction::Replace {
                    reasons: vec![format!("the server cannot change it in place: {}", status.message)],
                },
                unknown_outputs(Some(&placed)),
            )),
            Err(e) => Err(site.error(&format!("the server refuses {}", placed.describe()), e)),
        }
    }

    async fn apply_object(&self, request: &ApplyRequest) -> (Option<ResourceState>, Vec<Diagnostic>) {
        let site = match self.site() {
            Ok(site) => site,
            Err(d) => return (None, vec![d]),
        };
        let spec = match parse_spec(&request.desired) {
            Ok(spec) => spec,
            Err(d) => return (None, vec![d]),
        };
        let Some(identity) = Identity::of(&spec.manifest) else {
            return (None, vec![Diagnostic::error("the manifest's apiVersion, kind or name is still unknown")]);
        };
        // A kind whose CRD was just applied may take a moment to be served.
        let started = Instant::now();
        let kind = loop {
            match site.kind(&identity).await {
                Ok(Some(kind)) => break kind,
                Ok(None) if site.promised(&identity) && started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(None) => return (None, vec![site.unknown_kind(&identity)]),
                Err(d) => return (None, vec![d]),
            }
        };
        let identity = match site.place(identity, &kind) {
            Ok(identity) => identity,
            Err(d) => return (None, vec![d]),
        };
        let object =
            objects::to_apply(&spec.manifest, &site.stack, &request.resource.address, identity.namespace.as_deref());
        let mut live = match site.apply(&kind, &identity, &object, spec.force_conflicts, false).await {
            Ok(live) => live,
            Err(e) => return (None, vec![site.error(&format!("applying {}", identity.describe()), e)]),
        };
        let prior_manifest =
            request.current.as_ref().and_then(|c| c.spec.get("manifest")).cloned().unwrap_or(Value::Null);
        let shape = objects::merge_shapes(&spec.manifest, &prior_manifest);
        let mut diagnostics = Vec::new();
        let mut not_ready = None;
        if spec.wait {
            let deadline = Instant::now() + Duration::from_secs(spec.timeout.min(MAX_TIMEOUT));
            let mut pause = Duration::from_millis(200);
            loop {
                match objects::readiness(&live) {
                    Readiness::Ready => break,
                    Readiness::Failed(why) => {
                        diagnostics.push(Diagnostic::error(format!("{} failed: {why}", identity.describe())));
                        not_ready = Some(why);
                        break;
                    }
                    Readiness::Waiting(why) if Instant::now() >= deadline => {
                        diagnostics.push(
                            Diagnostic::error(format!(
                                "{} is not ready after {} s: {why}",
                                identity.describe(),
                                spec.timeout
                            ))
                            .with_field("timeout")
                            .with_hint("it was applied; look at it with kubectl, raise `timeout`, or set `wait: false`; the next apply waits for it again"),
                        );
                        not_ready = Some(why);
                        break;
                    }
                    Readiness::Waiting(_) => {}
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                match site.get(&kind, &identity).await {
                    Ok(Some(now)) => live = now,
                    Ok(None) => {
                        return (
                            None,
                            vec![Diagnostic::error(format!(
                                "{} disappeared while strata waited for it",
                                identity.describe()
                            ))],
                        );
                    }
                    // A dropped connection while waiting: try again until the deadline.
                    Err(d) if d.transient && Instant::now() < deadline => {}
                    Err(d) => {
                        not_ready = Some(format!("its readiness could not be checked: {}", d.summary));
                        diagnostics.push(d);
                        break;
                    }
                }
            }
        }
        let private = strip_nulls(json!({"owned": true, "notReady": not_ready}));
        (Some(state_of(&identity, &live, &request.desired, &shape, private)), diagnostics)
    }

    async fn delete_object(&self, request: &DeleteRequest) -> Result<(), Diagnostic> {
        let site = self.site()?;
        let Some(identity) = Identity::parse(&request.current.id) else {
            return Err(Diagnostic::error(format!("`{}` is not a kubernetes object id", request.current.id)));
        };
        let Some(kind) = site.kind(&identity).await? else {
            // Its kind is no longer served (its CRD is gone): so is the object.
            return Ok(());
        };
        let api = site.api(&kind, &identity);
        let params =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
        site.count();
        match api.delete(&identity.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => return Err(site.error(&format!("deleting {}", identity.describe()), e)),
        }
        let timeout = request.current.spec.get("timeout").and_then(Value::as_u64).unwrap_or(default_timeout());
        let deadline = Instant::now() + Duration::from_secs(timeout.min(MAX_TIMEOUT));
        let mut pause = Duration::from_millis(100);
        loop {
            match site.get(&kind, &identity).await? {
                None => return Ok(()),
                Some(live) if Instant::now() >= deadline => {
                    let finalizers = live.pointer("/metadata/finalizers").cloned().unwrap_or(json!([]));
                    return Err(Diagnostic::error(format!(
                        "{} is still there {timeout} s after it was deleted",
                        identity.describe()
                    ))
                    .with_detail(format!("finalizers: {finalizers}"))
                    .with_hint("a finalizer's controller may be missing or stuck; look at the object with kubectl"));
                }
                Some(_) => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn import_object(&self, request: &ImportRequest) -> Result<ResourceState, Diagnostic> {
        let site = self.site()?;
        let Some(identity) = Identity::parse(&request.id) else {
            return Err(Diagnostic::error(format!("`{}` is not a kubernetes object id", request.id)).with_hint(
                "write `v1/Kind/[namespace/]name` for the core group, `group/version/Kind/[namespace/]name` otherwise (e.g. `apps/v1/Deployment/default/web`)",
            ));
        };
        let Some(kind) = site.kind(&identity).await? else {
            return Err(site.unknown_kind(&identity));
        };
        let identity = site.place(identity, &kind)?;
        let Some(live) = site.get(&kind, &identity).await? else {
            return Err(Diagnostic::error(format!("{} does not exist on {}", identity.describe(), site.server)));
        };
        let manifest = strip_server_fields(live.clone());
        Ok(state_of(&identity, &live, &json!({"manifest": {}}), &manifest, json!({"owned": true})))
    }
}

/// Drops null members of an object.
fn strip_nulls(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    value
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: "kubernetes".into(),
            config: serde_json::from_str(include_str!("../../../schemas/providers/kubernetes.config.json"))
                .unwrap_or(Value::Bool(true)),
            resource_types: vec![ResourceTypeSchema {
                name: MANIFEST.into(),
                description: "any Kubernetes object, applied with server-side apply".into(),
                spec: serde_json::from_str(include_str!("../../../schemas/resources/kubernetes.manifest.json"))
                    .unwrap_or(Value::Bool(true)),
                outputs: ["uid", "name", "namespace", "apiVersion", "kind"].iter().map(|s| s.to_string()).collect(),
            }],
            data: Value::Null,
        }
    }

    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse {
        match self.configure_site(request).await {
            Ok(max_concurrency) => ConfigureResponse { diagnostics: vec![], max_concurrency },
            Err(d) => ConfigureResponse { diagnostics: vec![d], max_concurrency: None },
        }
    }

    async fn read(&self, request: ReadRequest) -> ReadResponse {
        match self.read_object(&request).await {
            Ok(state) => ReadResponse { diagnostics: vec![], state },
            Err(d) => ReadResponse { diagnostics: vec![d], state: None },
        }
    }

    async fn plan(&self, request: PlanRequest) -> PlanResponse {
        let mut warnings = Vec::new();
        match self.plan_object(&request, &mut warnings).await {
            Ok(mut response) => {
                response.diagnostics.extend(warnings);
                response
            }
            Err(d) => {
                warnings.push(d);
                PlanResponse::failed(warnings)
            }
        }
    }

    async fn apply(&self, request: ApplyRequest) -> ApplyResponse {
        let (state, diagnostics) = self.apply_object(&request).await;
        ApplyResponse { diagnostics, state }
    }

    async fn delete(&self, request: DeleteRequest) -> DeleteResponse {
        match self.delete_object(&request).await {
            Ok(()) => DeleteResponse { diagnostics: vec![] },
            Err(d) => DeleteResponse { diagnostics: vec![d] },
        }
    }

    async fn import(&self, request: ImportRequest) -> ImportResponse {
        match self.import_object(&request).await {
            Ok(state) => ImportResponse { diagnostics: vec![], state: Some(state) },
            Err(d) => ImportResponse { diagnostics: vec![d], state: None },
        }
    }

    fn implied_dependencies(&self, resources: &[SpecRef<'_>]) -> Vec<(usize, usize)> {
        objects::implied_dependencies(resources)
    }
}
