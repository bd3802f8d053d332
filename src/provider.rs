//! The providers the engine knows, their resource types, and configured site instances.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_provider_sdk::{ConfigureRequest, Provider, ProviderFactory, ProviderSchema, SpecRef, unknown};

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::schema::{self, Schema};
use crate::stack::Stack;

/// What the engine knows of one resource type.
#[derive(Debug)]
pub struct TypeInfo {
    /// The provider that serves it.
    pub provider: String,
    /// The compiled schema of its spec.
    pub spec: Schema,
    /// Its output fields.
    pub outputs: Vec<String>,
    /// Top-level spec fields that are sensitive.
    pub write_only: Vec<String>,
}

/// The providers linked into this engine.
pub struct Registry {
    factories: IndexMap<String, ProviderFactory>,
    schemas: IndexMap<String, ProviderSchema>,
    types: HashMap<String, TypeInfo>,
}

impl Registry {
    /// No providers.
    pub fn empty() -> Registry {
        Registry { factories: IndexMap::new(), schemas: IndexMap::new(), types: HashMap::new() }
    }

    /// The providers shipped with strata.
    pub fn builtin() -> Registry {
        Registry::empty()
            .with(strata_provider_local::factory)
            .with(strata_provider_baremetal::factory)
            .with(strata_provider_aws::factory)
            .with(strata_provider_kubernetes::factory)
            .with(strata_provider_openstack::factory)
    }

    /// Adds a provider.
    pub fn with(mut self, factory: ProviderFactory) -> Registry {
        let schema = factory().schema();
        for t in &schema.resource_types {
            // A provider's own schema failing to compile is a bug in that provider; the
            // type then accepts anything rather than taking the engine down.
            let spec = Schema::compile(t.spec.clone())
                .unwrap_or_else(|_| Schema::compile(Value::Bool(true)).expect("`true` is a schema"));
            self.types.insert(
                t.name.clone(),
                TypeInfo {
                    provider: schema.name.clone(),
                    write_only: schema::write_only_fields(&t.spec),
                    spec,
                    outputs: t.outputs.clone(),
                },
            );
        }
        self.factories.insert(schema.name.clone(), factory);
        self.schemas.insert(schema.name.clone(), schema);
        self
    }

    /// A resource type.
    pub fn type_info(&self, name: &str) -> Option<&TypeInfo> {
        self.types.get(name)
    }

    /// A provider's schema.
    pub fn provider_schema(&self, name: &str) -> Option<&ProviderSchema> {
        self.schemas.get(name)
    }

    /// Every provider's static data, by provider name (templates see it as `providers`).
    pub fn data(&self) -> Value {
        Value::Object(
            self.schemas
                .iter()
                .filter(|(_, s)| !s.data.is_null())
                .map(|(name, s)| (name.clone(), s.data.clone()))
                .collect(),
        )
    }

    /// The pairs `(dependent, dependency)` the provider implies among its resources on one
    /// site (see `Provider::implied_dependencies`).
    pub fn implied_dependencies(&self, provider: &str, resources: &[SpecRef<'_>]) -> Vec<(usize, usize)> {
        match self.factories.get(provider) {
            Some(factory) => factory()
                .implied_dependencies(resources)
                .into_iter()
                .filter(|&(a, b)| a != b && a < resources.len() && b < resources.len())
                .collect(),
            None => Vec::new(),
        }
    }

    /// The provider names.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Checks every site of the stack: a known provider, a config its schema accepts.
    pub fn validate_sites(&self, stack: &Stack) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for (name, site) in &stack.sites {
            let at = format!("/spec/sites/{name}");
            match self.schemas.get(&site.provider) {
                None => out.push(
                    Diagnostic::error(format!(
                        "site `{name}` uses provider `{}`, which this strata does not have",
                        site.provider
                    ))
                    .at(stack.doc.locate(&format!("{at}/provider")))
                    .field(format!("spec.sites.{name}.provider"))
                    .hint(format!("available providers: {}", self.names().join(", "))),
                ),
                Some(schema) => {
                    if let Ok(config_schema) = Schema::compile(schema.config.clone()) {
                        out.extend(config_schema.validate(&site.config, &stack.doc, &format!("{at}/config")));
                    }
                }
            }
        }
        out
    }
}

/// How to reach one site: what a plan records so that it can be applied without the stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteConnection {
    /// The provider name.
    pub provider: String,
    /// The site's config.
    pub config: Value,
    /// The folder relative paths resolve against.
    pub base_dir: PathBuf,
}

/// A provider configured for a site.
///
/// A site whose `config` refers to outputs of other resources (`{{ ref(...) }}`, e.g. a
/// kubeconfig made by a cluster resource) is configured once those outputs are known: at
/// plan time when they are already recorded, otherwise during the apply, just before the
/// site's first resource is worked on. Until then [`ConfiguredSite::ready`] says so.
#[derive(Clone)]
pub struct ConfiguredSite {
    /// The provider instance.
    pub provider: Arc<dyn Provider>,
    /// Its concurrency limit, if it has one.
    pub max_concurrency: Option<usize>,
    /// For a site configured late: its pending configuration.
    pub deferred: Option<Arc<Deferred>>,
}

/// The configuration of a site that waits for outputs of other resources.
pub struct Deferred {
    request: ConfigureRequest,
    done: tokio::sync::OnceCell<Result<(), Vec<Diagnostic>>>,
}

impl Deferred {
    /// The addresses whose outputs the configuration needs.
    pub fn needs(&self) -> Vec<String> {
        let mut out = Vec::new();
        unknown::visit_references(&self.request.config, &mut |r| out.push(r.address.to_string()));
        out.sort();
        out.dedup();
        out
    }
}

/// Whether a site can be worked on.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Configured.
    Ready,
    /// Its configuration needs outputs that are not known yet (of these addresses).
    Waiting(Vec<String>),
}

impl ConfiguredSite {
    /// Configures a deferred site when `lookup` knows every output its config needs.
    /// `lookup(address, field)` gives a known output value.
    pub async fn ready(
        &self,
        lookup: &(dyn Fn(&str, &str) -> Option<Value> + Sync),
    ) -> Result<Readiness, Vec<Diagnostic>> {
        let Some(deferred) = &self.deferred else {
            return Ok(Readiness::Ready);
        };
        if let Some(done) = deferred.done.get() {
            return done.clone().map(|_| Readiness::Ready);
        }
        let mut config = deferred.request.config.clone();
        unknown::resolve(&mut config, &|address, field| {
            lookup(address, field).filter(|v| !unknown::contains_unknown(v))
        });
        if unknown::contains_unknown(&config) {
            return Ok(Readiness::Waiting(deferred.needs()));
        }
        let site = deferred.request.site.clone();
        let request = ConfigureRequest { config, ..deferred.request.clone() };
        let provider = self.provider.clone();
        deferred
            .done
            .get_or_init(|| async move {
                let response = provider.configure(request).await;
                site_diagnostics(&site, response.diagnostics).map(|_| ())
            })
            .await
            .clone()
            .map(|_| Readiness::Ready)
    }
}

/// A site's configure diagnostics as the engine's: fields point into the stack.
fn site_diagnostics(
    name: &str,
    diagnostics: Vec<strata_provider_sdk::Diagnostic>,
) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
    let failed = strata_provider_sdk::has_errors(&diagnostics);
    let converted = diagnostics
        .into_iter()
        .map(|d| {
            let mut d = Diagnostic::from_provider(d, &format!("site {name}"));
            d.field = d.field.map(|f| f.replacen("spec.", &format!("spec.sites.{name}.config."), 1));
            d
        })
        .collect();
    if failed { Err(converted) } else { Ok(converted) }
}

/// Configures one provider instance per site (a site whose config refers to outputs of
/// other resources is configured later, see [`ConfiguredSite`]).
pub async fn configure_sites(
    registry: &Registry,
    stack_name: &str,
    sites: &IndexMap<String, SiteConnection>,
) -> Result<HashMap<String, ConfiguredSite>, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut configured = HashMap::new();
    for (name, site) in sites {
        let Some(factory) = registry.factories.get(&site.provider) else {
            diags.push(
                Diagnostic::error(format!(
                    "site `{name}` uses provider `{}`, which this strata does not have",
                    site.provider
                ))
                .hint(format!("available providers: {}", registry.names().join(", "))),
            );
            continue;
        };
        let provider: Arc<dyn Provider> = Arc::from(factory());
        let request = ConfigureRequest {
            site: name.clone(),
            stack: stack_name.to_string(),
            config: site.config.clone(),
            base_dir: site.base_dir.clone(),
        };
        if unknown::contains_unknown(&site.config) {
            let deferred = Deferred { request, done: tokio::sync::OnceCell::new() };
            configured.insert(
                name.clone(),
                ConfiguredSite { provider, max_concurrency: None, deferred: Some(Arc::new(deferred)) },
            );
            continue;
        }
        let response = provider.configure(request).await;
        match site_diagnostics(name, response.diagnostics) {
            Ok(warnings) => {
                diags.extend(warnings);
                configured.insert(
                    name.clone(),
                    ConfiguredSite { provider, max_concurrency: response.max_concurrency, deferred: None },
                );
            }
            Err(errors) => diags.extend(errors),
        }
    }
    diags.into_result(configured)
}
