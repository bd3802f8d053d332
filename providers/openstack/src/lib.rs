//! The `openstack` provider: networks, subnets, routers, security groups, keypairs, ports,
//! floating IPs (Neutron) and servers (Nova), with GPU flavors checked and chosen at plan
//! time.
//!
//! - **Authentication** is `openstack_sdk`'s (gtema/openstack, maintained, async): a
//!   `clouds.yaml` entry (`cloud`, default `$OS_CLOUD`, standard search paths and
//!   `OS_CLIENT_CONFIG_FILE`) or the `OS_*` variables; password or application credential
//!   against Keystone v3; endpoints from the service catalog by region and interface;
//!   re-authentication when a token expires. Its generated service bindings are not used
//!   (they would add minutes of build for the few calls strata makes); requests are plain
//!   JSON through its session ([`client`]).
//! - **Ownership**: Neutron objects carry the tags `strata-stack=<stack>` and
//!   `strata-address=<address>`, servers the tag `strata-stack=<stack>` and the metadata
//!   `strata:address`, set in the creating request. An object made by a run that died
//!   before recording it is found by its address and adopted, never made twice.
//! - **Refresh**: one list per type per site, filtered by the stack's tag, cached until
//!   something of that type is written.
#![deny(missing_docs)]

pub mod client;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use openstack_sdk::AsyncOpenStack;
use openstack_sdk::config::{CloudConfig, ConfigFile};
use openstack_sdk::types::ServiceType;
use serde::Deserialize;
use serde_json::Value;
use strata_provider_sdk::*;

use client::{Failure, Service};

/// The `openstack` provider for one site (a cloud and region).
#[derive(Default)]
pub struct OpenStackProvider {
    site: OnceLock<Site>,
}

const _: () = assert_provider::<OpenStackProvider>();

/// Makes an [`OpenStackProvider`]; a [`ProviderFactory`].
pub fn factory() -> Box<dyn Provider> {
    Box::new(OpenStackProvider::default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SiteConfig {
    #[serde(default)]
    cloud: Option<String>,
    #[serde(default)]
    clouds_file: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    gpu_aliases: HashMap<String, String>,
    #[serde(default)]
    server_timeout: Option<u64>,
    #[serde(default)]
    request_timeout: Option<u64>,
    #[serde(default)]
    max_concurrency: Option<usize>,
}

/// A configured cloud.
pub(crate) struct Site {
    pub(crate) stack: String,
    /// What the messages call it: `cloud NAME` or `the OS_* variables`.
    pub(crate) source: String,
    pub(crate) auth_url: String,
    config: CloudConfig,
    request_timeout: Duration,
    client: tokio::sync::Mutex<Option<Arc<AsyncOpenStack>>>,
    /// One list per type (collection), until something of that type is written.
    cache: tokio::sync::Mutex<HashMap<&'static str, Arc<Vec<Value>>>>,
    /// Flavors with their extra specs.
    flavors: tokio::sync::Mutex<Option<Arc<Vec<Value>>>>,
    /// Image name or id → id (or why not).
    images: tokio::sync::Mutex<HashMap<String, Result<String, String>>>,
    pub(crate) gpu_aliases: HashMap<String, String>,
    pub(crate) server_timeout: Duration,
    /// False once Neutron refused `tags` in a create request (tags are then set right after).
    tags_on_create: AtomicBool,
    calls: AtomicU64,
}

impl Drop for Site {
    fn drop(&mut self) {
        let calls = self.calls.load(Ordering::Relaxed);
        tracing::info!(auth_url = %self.auth_url, calls, "openstack API calls made");
        if std::env::var_os("STRATA_OS_CALLS").is_some() {
            eprintln!("openstack: {calls} API calls ({})", self.source);
        }
    }
}

impl Site {
    /// The session, made (authenticated) on first use.
    async fn client(&self) -> Result<Arc<AsyncOpenStack>, Diagnostic> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let connected = AsyncOpenStack::builder(&self.config)
            .disable_auth_cache(true)
            .http_timeout(self.request_timeout)
            .http_connect_timeout(self.request_timeout.min(Duration::from_secs(10)))
            .connect()
            .await
            .map_err(|e| {
                let text = error_chain(&e);
                let lower = text.to_lowercase();
                let unreachable =
                    ["connect", "sending request", "timed out", "dns error", "discovery error", "not working"];
                if unreachable.iter().any(|u| lower.contains(u)) {
                    Diagnostic::error(format!("cannot reach Keystone at {} ({}): {text}", self.auth_url, self.source))
                        .with_field("site.cloud")
                        .with_hint("check that the cloud is up and that `auth_url` is right")
                        .transient()
                } else if lower.contains("401") || lower.contains("unauthorized") || lower.contains("authentication") {
                    Diagnostic::error(format!(
                        "Keystone at {} refused the credentials of {}: {text}",
                        self.auth_url, self.source
                    ))
                    .with_field("site.cloud")
                    .with_hint(
                        "check the user, password (or application credential), project and domains of that cloud entry",
                    )
                } else {
                    Diagnostic::error(format!("cannot authenticate to {} ({}): {text}", self.auth_url, self.source))
                        .with_field("site.cloud")
                }
            })?;
        // Version discovery: the catalog's endpoints are often unversioned (Neutron's is);
        // discovery finds `/v2.0`, `/v2.1`, `/v2` and the microversions on offer.
        for service in [ServiceType::Network, ServiceType::Compute, ServiceType::Image] {
            self.calls.fetch_add(1, Ordering::Relaxed);
            // Best effort: a service without a version document is used at its catalog URL.
            if let Err(e) = connected.discover_service_endpoint(&service).await {
                tracing::debug!(%service, "no version discovery: {}", error_chain(&e));
            }
        }
        let connected = Arc::new(connected);
        *client = Some(connected.clone());
        Ok(connected)
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        service: Service,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let client = self.client().await.map_err(Failure::Other)?;
        match client::send(&client, &self.calls, method.clone(), service, path, query, body.clone()).await {
            // After re-authenticating (an expired token) the session's catalog is fresh and
            // has forgotten the versions discovery found: discover again, once.
            Err(Failure::Other(d)) if d.summary.contains("Api Version") || d.summary.contains("catalog") => {
                self.calls.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = client.discover_service_endpoint(&service.service_type()).await {
                    tracing::debug!("discovery again failed: {}", error_chain(&e));
                }
                client::send(&client, &self.calls, method, service, path, query, body).await
            }
            other => other,
        }
    }

    /// The stack's tag. Nova allows 60 characters in a tag: a longer stack name is cut and
    /// completed with a digest of the whole, so that it stays unique.
    pub(crate) fn stack_tag(&self) -> String {
        let tag = format!("strata-stack={}", self.stack);
        if tag.len() <= 60 {
            return tag;
        }
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.stack.as_bytes());
        let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        let head: String = tag.chars().take(49).collect();
        format!("{head}~{hex}")
    }

    pub(crate) fn address_tag(address: &str) -> String {
        format!("strata-address={address}")
    }

    /// Every object of a Neutron collection tagged with the stack (cached).
    pub(crate) async fn list_neutron(&self, collection: &'static str) -> Result<Arc<Vec<Value>>, Diagnostic> {
        let mut cache = self.cache.lock().await;
        if let Some(list) = cache.get(collection) {
            return Ok(list.clone());
        }
        let answer = self
            .send(Method::GET, Service::Network, collection, &[("tags", self.stack_tag())], None)
            .await
            .map_err(|f| f.into_diagnostic(&format!("listing {collection}")))?;
        let items = Arc::new(answer.get(collection).and_then(Value::as_array).cloned().unwrap_or_default());
        cache.insert(collection, items.clone());
        Ok(items)
    }

    /// Every server tagged with the stack (cached).
    pub(crate) async fn list_servers(&self) -> Result<Arc<Vec<Value>>, Diagnostic> {
        let mut cache = self.cache.lock().await;
        if let Some(list) = cache.get("servers") {
            return Ok(list.clone());
        }
        let answer = self
            .send(Method::GET, Service::Compute, "servers/detail", &[("tags", self.stack_tag())], None)
            .await
            .map_err(|f| f.into_diagnostic("listing servers"))?;
        let items = Arc::new(answer.get("servers").and_then(Value::as_array).cloned().unwrap_or_default());
        cache.insert("servers", items.clone());
        Ok(items)
    }

    /// Forgets the cached list of a collection (after a write).
    pub(crate) async fn invalidate(&self, collection: &'static str) {
        self.cache.lock().await.remove(collection);
    }

    /// Creates a Neutron object with the ownership tags.
    pub(crate) async fn create_neutron(
        &self,
        collection: &'static str,
        singular: &str,
        mut body: serde_json::Map<String, Value>,
        address: &str,
    ) -> Result<Value, Diagnostic> {
        let tags = vec![Value::String(self.stack_tag()), Value::String(Self::address_tag(address))];
        self.invalidate(collection).await;
        let what = format!("creating the {singular}");
        if self.tags_on_create.load(Ordering::Relaxed) {
            let mut tagged = body.clone();
            tagged.insert("tags".into(), Value::Array(tags.clone()));
            match self
                .send(Method::POST, Service::Network, collection, &[], Some(serde_json::json!({ singular: tagged })))
                .await
            {
                Ok(answer) => return Ok(answer.get(singular).cloned().unwrap_or(Value::Null)),
                Err(Failure::Status { code: 400, message }) if message.contains("tags") => {
                    self.tags_on_create.store(false, Ordering::Relaxed);
                }
                Err(f) => return Err(f.into_diagnostic(&what)),
            }
        }
        body.remove("tags");
        let made = self
            .send(Method::POST, Service::Network, collection, &[], Some(serde_json::json!({ singular: body })))
            .await
            .map_err(|f| f.into_diagnostic(&what))?;
        let made = made.get(singular).cloned().unwrap_or(Value::Null);
        let id = made.get("id").and_then(Value::as_str).unwrap_or_default();
        self.send(
            Method::PUT,
            Service::Network,
            &format!("{collection}/{id}/tags"),
            &[],
            Some(serde_json::json!({"tags": tags})),
        )
        .await
        .map_err(|f| f.into_diagnostic(&format!("tagging the new {singular} {id}")))?;
        Ok(made)
    }

    /// All flavors visible to the project, with extra specs (cached).
    pub(crate) async fn flavors(&self) -> Result<Arc<Vec<Value>>, Diagnostic> {
        let mut flavors = self.flavors.lock().await;
        if let Some(list) = flavors.as_ref() {
            return Ok(list.clone());
        }
        let answer = self
            .send(Method::GET, Service::Compute, "flavors/detail", &[("is_public", "None".into())], None)
            .await
            .map_err(|f| f.into_diagnostic("listing flavors"))?;
        let list = Arc::new(answer.get("flavors").and_then(Value::as_array).cloned().unwrap_or_default());
        *flavors = Some(list.clone());
        Ok(list)
    }

    /// An image's id from its name or id.
    pub(crate) async fn image_id(&self, image: &str) -> Result<String, Diagnostic> {
        // Held while looking up: many servers of one image ask at once, one asks Glance.
        let mut images = self.images.lock().await;
        if let Some(found) = images.get(image) {
            return found.clone().map_err(|e| Diagnostic::error(e).with_field("image"));
        }
        let by_id = self.send(Method::GET, Service::Image, &format!("images/{image}"), &[], None).await;
        let found = match by_id {
            Ok(v) if v.get("id").is_some() => Ok(v["id"].as_str().unwrap_or_default().to_string()),
            Ok(_) | Err(Failure::Status { code: 404 | 400, .. }) => {
                let answer = self
                    .send(Method::GET, Service::Image, "images", &[("name", image.to_string())], None)
                    .await
                    .map_err(|f| f.into_diagnostic("listing images"))?;
                let ids: Vec<String> = answer
                    .get("images")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|i| i.get("id").and_then(Value::as_str).map(String::from)).collect())
                    .unwrap_or_default();
                match ids.as_slice() {
                    [one] => Ok(one.clone()),
                    [] => {
                        Err(format!("no image named or with id `{image}` is visible to the project ({})", self.source))
                    }
                    many => Err(format!(
                        "{} images are named `{image}`: use the id of one ({})",
                        many.len(),
                        many.join(", ")
                    )),
                }
            }
            Err(f) => return Err(f.into_diagnostic(&format!("looking up image {image}"))),
        };
        images.insert(image.to_string(), found.clone());
        found.map_err(|e| Diagnostic::error(e).with_field("image"))
    }
}

fn not_configured() -> Diagnostic {
    Diagnostic::error("the openstack provider was not configured")
}

impl OpenStackProvider {
    pub(crate) fn site(&self) -> Result<&Site, Diagnostic> {
        self.site.get().ok_or_else(not_configured)
    }

    fn configure_site(&self, request: &ConfigureRequest) -> Result<Option<usize>, Diagnostic> {
        let config: SiteConfig = serde_json::from_value(request.config.clone())
            .map_err(|e| Diagnostic::error(format!("invalid config: {e}")))?;
        let cloud = config.cloud.clone().or_else(|| std::env::var("OS_CLOUD").ok().filter(|c| !c.is_empty()));
        let (mut cloud_config, source) = match &cloud {
            Some(name) => {
                // `OS_CLIENT_CONFIG_FILE` is how the Python tools name a clouds.yaml; the crate
                // only knows `OS_CLIENT_CONFIG_PATH`.
                let file = match &config.clouds_file {
                    Some(path) => Some(request.base_dir.join(path)),
                    None => std::env::var_os("OS_CLIENT_CONFIG_FILE")
                        .filter(|f| !f.is_empty())
                        .map(std::path::PathBuf::from),
                };
                if let Some(file) = &file
                    && !file.exists()
                {
                    return Err(Diagnostic::error(format!("the clouds file {} does not exist", file.display()))
                        .with_field("cloudsFile")
                        .with_hint("the path is relative to the stack file"));
                }
                let files = ConfigFile::new_with_user_specified_configs(file.as_ref(), None::<&std::path::Path>)
                    .map_err(|e| {
                        Diagnostic::error(format!("cannot read clouds.yaml: {}", error_chain(&e)))
                            .with_field(if config.clouds_file.is_some() { "cloudsFile" } else { "cloud" })
                    })?;
                let found = files.get_cloud_config(name).map_err(|e| {
                    Diagnostic::error(format!("cannot read cloud `{name}` of clouds.yaml: {}", error_chain(&e)))
                        .with_field("cloud")
                })?;
                let Some(found) = found else {
                    return Err(Diagnostic::error(format!("no cloud named `{name}` in clouds.yaml"))
                        .with_field("cloud")
                        .with_hint("clouds.yaml is read from ./clouds.yaml, ~/.config/openstack/, /etc/openstack/, OS_CLIENT_CONFIG_FILE, or `cloudsFile`"));
                };
                (found, format!("cloud `{name}`"))
            }
            None => {
                let found = CloudConfig::from_env().map_err(|e| {
                    Diagnostic::error(format!("cannot read the OS_* variables: {}", error_chain(&e)))
                        .with_field("cloud")
                })?;
                if found.auth.as_ref().and_then(|a| a.auth_url.as_ref()).is_none() {
                    return Err(Diagnostic::error(
                        "no OpenStack cloud: the site names no `cloud`, and neither OS_CLOUD nor OS_AUTH_URL is set",
                    )
                    .with_field("cloud")
                    .with_hint("set `cloud` to an entry of clouds.yaml, or export OS_CLOUD or the OS_* variables"));
                }
                (found, "the OS_* variables".to_string())
            }
        };
        if let Some(region) = &config.region {
            cloud_config.region_name = Some(region.clone());
        }
        if let Some(interface) = &config.interface {
            cloud_config.interface = Some(interface.clone());
        }
        let auth_url =
            cloud_config.auth.as_ref().and_then(|a| a.auth_url.clone()).unwrap_or_else(|| "(no auth_url)".into());
        let site = Site {
            stack: request.stack.clone(),
            source,
            auth_url,
            config: cloud_config,
            request_timeout: Duration::from_secs(config.request_timeout.unwrap_or(60)),
            client: Default::default(),
            cache: Default::default(),
            flavors: Default::default(),
            images: Default::default(),
            gpu_aliases: config.gpu_aliases.clone(),
            server_timeout: Duration::from_secs(config.server_timeout.unwrap_or(600)),
            tags_on_create: AtomicBool::new(true),
            calls: AtomicU64::new(0),
        };
        if self.site.set(site).is_err() {
            return Err(Diagnostic::error("the openstack provider was configured twice"));
        }
        Ok(Some(config.max_concurrency.unwrap_or(8)))
    }
}

fn schema_of(name: &str) -> Value {
    let text = match name {
        "openstack.network" => include_str!("../../../schemas/resources/openstack.network.json"),
        "openstack.subnet" => include_str!("../../../schemas/resources/openstack.subnet.json"),
        "openstack.router" => include_str!("../../../schemas/resources/openstack.router.json"),
        "openstack.security_group" => include_str!("../../../schemas/resources/openstack.security_group.json"),
        "openstack.keypair" => include_str!("../../../schemas/resources/openstack.keypair.json"),
        "openstack.port" => include_str!("../../../schemas/resources/openstack.port.json"),
        "openstack.server" => include_str!("../../../schemas/resources/openstack.server.json"),
        "openstack.floating_ip" => include_str!("../../../schemas/resources/openstack.floating_ip.json"),
        _ => "true",
    };
    serde_json::from_str(text).unwrap_or(Value::Bool(true))
}

#[async_trait]
impl Provider for OpenStackProvider {
    fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: "openstack".into(),
            config: serde_json::from_str(include_str!("../../../schemas/providers/openstack.config.json"))
                .unwrap_or(Value::Bool(true)),
            resource_types: types::TYPES
                .iter()
                .map(|t| ResourceTypeSchema {
                    name: t.name.to_string(),
                    description: t.description.to_string(),
                    spec: schema_of(t.name),
                    outputs: t.outputs.iter().map(|o| o.to_string()).collect(),
                })
                .collect(),
            data: Value::Null,
        }
    }

    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse {
        match self.configure_site(&request) {
            Ok(max_concurrency) => ConfigureResponse { diagnostics: vec![], max_concurrency },
            Err(d) => ConfigureResponse { diagnostics: vec![d], max_concurrency: None },
        }
    }

    async fn read(&self, request: ReadRequest) -> ReadResponse {
        let result = match self.site() {
            Ok(site) => types::read(site, &request).await,
            Err(d) => Err(d),
        };
        match result {
            Ok(state) => ReadResponse { diagnostics: vec![], state },
            Err(d) => ReadResponse { diagnostics: vec![d], state: None },
        }
    }

    async fn plan(&self, request: PlanRequest) -> PlanResponse {
        let result = match self.site() {
            Ok(site) => types::plan(site, &request).await,
            Err(d) => Err(d),
        };
        result.unwrap_or_else(|d| PlanResponse::failed(vec![d]))
    }

    async fn apply(&self, request: ApplyRequest) -> ApplyResponse {
        let site = match self.site() {
            Ok(site) => site,
            Err(d) => return ApplyResponse { diagnostics: vec![d], state: None },
        };
        let (state, diagnostics) = types::apply(site, &request).await;
        ApplyResponse { diagnostics, state }
    }

    async fn delete(&self, request: DeleteRequest) -> DeleteResponse {
        let result = match self.site() {
            Ok(site) => types::delete(site, &request).await,
            Err(d) => Err(d),
        };
        DeleteResponse { diagnostics: result.err().into_iter().collect() }
    }

    async fn import(&self, request: ImportRequest) -> ImportResponse {
        let result = match self.site() {
            Ok(site) => types::import(site, &request).await,
            Err(d) => Err(d),
        };
        match result {
            Ok(state) => ImportResponse { diagnostics: vec![], state: Some(state) },
            Err(d) => ImportResponse { diagnostics: vec![d], state: None },
        }
    }
}
