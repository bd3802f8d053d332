//! The `Stack` document: sites, and the blueprint instances placed on them.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use crate::diagnostics::{Diagnostic, Diagnostics, pointer_to_field};
use crate::document::Document;
use crate::schema;

/// A loaded, validated stack.
#[derive(Debug, Clone)]
pub struct Stack {
    /// `metadata.name`.
    pub name: String,
    /// The folder of the stack file; relative paths resolve here.
    pub dir: PathBuf,
    /// Catalog folders, resolved.
    pub catalog: Vec<PathBuf>,
    /// Where the state lives.
    pub state: StateConfig,
    /// Sites by name, in file order.
    pub sites: IndexMap<String, Site>,
    /// Components, in file order.
    pub components: Vec<Component>,
    /// The document, for locations.
    pub doc: Document,
}

/// `spec.state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Backend name (`local`).
    pub backend: String,
    /// For `local`: the state file, resolved.
    pub path: PathBuf,
}

/// One site.
#[derive(Debug, Clone, Deserialize)]
pub struct Site {
    /// The provider that reaches it.
    pub provider: String,
    /// Labels, for selection and policies.
    #[serde(default)]
    pub labels: IndexMap<String, String>,
    /// The provider's configuration.
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// One component: a blueprint instance on one or many sites.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// Unique name in the stack.
    pub name: String,
    /// `name@version-range`.
    pub blueprint: String,
    /// One site.
    #[serde(default)]
    pub site: Option<String>,
    /// Or every site matching these labels.
    #[serde(default)]
    pub sites: Option<SiteSelector>,
    /// The blueprint's input values.
    #[serde(default = "empty_object")]
    pub values: Value,
    /// Components whose resources must exist first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Its index in `spec.components`, for locations.
    #[serde(skip)]
    pub index: usize,
}

/// `sites: {matchLabels: ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteSelector {
    /// Every label must match.
    pub match_labels: IndexMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    catalog: Option<Vec<String>>,
    #[serde(default)]
    state: Option<RawState>,
    sites: IndexMap<String, Site>,
    #[serde(default)]
    components: Vec<Component>,
}

#[derive(Deserialize)]
struct RawState {
    backend: String,
    path: Option<String>,
}

/// The default state file, relative to the stack file.
pub const DEFAULT_STATE_PATH: &str = ".strata/state.json";

impl Stack {
    /// Loads and validates a stack file (schema, then references between its parts).
    pub fn load(path: &Path) -> Result<Stack, Diagnostics> {
        let stack = Stack::parse(path)?;
        let mut diags = Diagnostics::new();
        stack.check_references(&mut diags);
        diags.into_result(stack)
    }

    /// Loads a stack file and checks it against the schema only; [`Stack::check`] checks the
    /// references between its parts.
    pub fn parse(path: &Path) -> Result<Stack, Diagnostics> {
        let doc = Document::load(path)?;
        let mut diags = Diagnostics::new();
        diags.extend(schema::STACK.validate(&doc.value, &doc, ""));
        if diags.has_errors() {
            return Err(diags);
        }
        let raw: RawSpec = serde_json::from_value(doc.value["spec"].clone())
            .map_err(|e| Diagnostic::error(format!("cannot read the stack: {e}")).at(doc.locate("/spec")))?;
        let name = doc.value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let catalog = raw
            .catalog
            .unwrap_or_else(|| vec!["./blueprints".into()])
            .iter()
            .map(|c| normalize(&dir.join(c)))
            .collect();
        let state = match raw.state {
            Some(s) => {
                StateConfig { backend: s.backend, path: dir.join(s.path.as_deref().unwrap_or(DEFAULT_STATE_PATH)) }
            }
            None => StateConfig { backend: "local".into(), path: dir.join(DEFAULT_STATE_PATH) },
        };
        let mut components = raw.components;
        for (i, c) in components.iter_mut().enumerate() {
            c.index = i;
        }
        Ok(Stack { name, dir, catalog, state, sites: raw.sites, components, doc })
    }

    /// The problems between the stack's parts (unknown sites and components, duplicates).
    pub fn check(&self) -> Vec<Diagnostic> {
        let mut diags = Diagnostics::new();
        self.check_references(&mut diags);
        diags.0
    }

    fn check_references(&self, diags: &mut Diagnostics) {
        let mut seen = IndexMap::new();
        for c in &self.components {
            let at = format!("/spec/components/{}", c.index);
            if let Some(first) = seen.insert(c.name.clone(), c.index) {
                diags.push(
                    Diagnostic::error(format!("component `{}` is declared twice", c.name))
                        .at(self.doc.locate(&format!("{at}/name")))
                        .field(pointer_to_field(&format!("{at}/name")))
                        .hint(format!("component names are unique in a stack; the first is spec.components[{first}]")),
                );
            }
            if let Some(site) = &c.site
                && !self.sites.contains_key(site)
            {
                diags.push(
                    Diagnostic::error(format!(
                        "component `{}` is placed on site `{site}`, which the stack does not declare",
                        c.name
                    ))
                    .at(self.doc.locate(&format!("{at}/site")))
                    .field(pointer_to_field(&format!("{at}/site")))
                    .hint(format!("declared sites: {}", self.site_list())),
                );
            }
            if c.sites.is_some() && self.sites_of(c).is_empty() {
                diags.push(
                    Diagnostic::error(format!("the label selector of component `{}` matches no site", c.name))
                        .at(self.doc.locate(&format!("{at}/sites")))
                        .field(pointer_to_field(&format!("{at}/sites/matchLabels")))
                        .hint("check the labels under `spec.sites.<name>.labels`"),
                );
            }
        }
        for c in &self.components {
            for (i, dep) in c.depends_on.iter().enumerate() {
                let at = format!("/spec/components/{}/dependsOn/{i}", c.index);
                if !seen.contains_key(dep) {
                    diags.push(
                        Diagnostic::error(format!(
                            "component `{}` depends on `{dep}`, which the stack does not declare",
                            c.name
                        ))
                        .at(self.doc.locate(&at))
                        .field(pointer_to_field(&at)),
                    );
                }
            }
        }
    }

    fn site_list(&self) -> String {
        self.sites.keys().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
    }

    /// The sites a component is placed on, in stack order.
    pub fn sites_of(&self, component: &Component) -> Vec<&str> {
        match (&component.site, &component.sites) {
            (Some(site), _) => self.sites.get_key_value(site).map(|(k, _)| vec![k.as_str()]).unwrap_or_default(),
            (None, Some(selector)) => self
                .sites
                .iter()
                .filter(|(_, s)| selector.match_labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|(k, _)| k.as_str())
                .collect(),
            (None, None) => vec![],
        }
    }
}

/// Drops `.` components (`stack/./blueprints` → `stack/blueprints`), without touching the
/// filesystem.
pub fn normalize(path: &Path) -> PathBuf {
    let normalized: PathBuf = path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    if normalized.as_os_str().is_empty() { PathBuf::from(".") } else { normalized }
}
