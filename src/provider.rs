//! The providers the engine knows, their resource types, and configured site instances.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_provider_sdk::{ConfigureRequest, Provider, ProviderFactory, ProviderSchema};

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
#[derive(Clone)]
pub struct ConfiguredSite {
    /// The provider instance.
    pub provider: Arc<dyn Provider>,
    /// Its concurrency limit, if it has one.
    pub max_concurrency: Option<usize>,
}

/// Configures one provider instance per site.
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
        let response = provider
            .configure(ConfigureRequest {
                site: name.clone(),
                stack: stack_name.to_string(),
                config: site.config.clone(),
                base_dir: site.base_dir.clone(),
            })
            .await;
        let failed = strata_provider_sdk::has_errors(&response.diagnostics);
        for d in response.diagnostics {
            let mut d = Diagnostic::from_provider(d, &format!("site {name}"));
            d.field = d.field.map(|f| f.replacen("spec.", &format!("spec.sites.{name}.config."), 1));
            diags.push(d);
        }
        if !failed {
            configured.insert(name.clone(), ConfiguredSite { provider, max_concurrency: response.max_concurrency });
        }
    }
    diags.into_result(configured)
}
