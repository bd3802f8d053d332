//! The catalog: versioned blueprints found in the stack's catalog folders.
//!
//! A blueprint is a folder holding `blueprint.yaml` and `templates/*.j2`. A catalog folder
//! holds blueprint folders directly (`blueprints/node-config/`) or one level deeper, one
//! folder per version (`blueprints/node-config/1.2.0/`). Templates whose name starts with
//! `_` are partials: they can be included or imported but render no resources.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;
use semver::{Version, VersionReq};
use serde::Deserialize;
use serde_json::Value;

use crate::diagnostics::{Diagnostic, Diagnostics, Location, pointer_to_field};
use crate::document::Document;
use crate::schema::{self, Schema};

/// One blueprint version.
#[derive(Debug)]
pub struct Blueprint {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: Version,
    /// `metadata.description`.
    pub description: String,
    /// `metadata.category`.
    pub category: Option<String>,
    /// The inputs schema as written, `additionalProperties: false` added when absent.
    pub inputs: Value,
    /// The compiled inputs schema.
    pub inputs_schema: Schema,
    /// Child blueprints.
    pub uses: Vec<Use>,
    /// Output name → expression.
    pub outputs: IndexMap<String, String>,
    /// Versions that may be upgraded in place to this one.
    pub upgrade_from: Vec<VersionReq>,
    /// The blueprint folder.
    pub dir: PathBuf,
    /// Template name (relative to `templates/`) → source, sorted by name.
    pub templates: Vec<(String, String)>,
    /// The `blueprint.yaml` document, for locations.
    pub doc: Document,
    /// The template environment, made on first use.
    pub(crate) environment: OnceLock<minijinja::Environment<'static>>,
}

impl Blueprint {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Whether resources made by version `from` may be changed in place by this version:
    /// when `upgradeFrom` is given, `from` must match one of its ranges; without it, any
    /// earlier version of the same major may. The same version always may.
    pub fn may_upgrade_from(&self, from: &Version) -> bool {
        if from == &self.version {
            return true;
        }
        if from > &self.version {
            return false;
        }
        if self.upgrade_from.is_empty() {
            from.major == self.version.major
        } else {
            self.upgrade_from.iter().any(|range| range.matches(from))
        }
    }
}

/// One entry of `spec.uses`.
#[derive(Debug, Clone, Deserialize)]
pub struct Use {
    /// The child's name, unique in this blueprint.
    pub name: String,
    /// `name@range`.
    pub blueprint: String,
    /// Values for the child; strings are templates over our context.
    #[serde(default = "empty_object")]
    pub values: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A parsed `name@range`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlueprintRef {
    /// The blueprint name.
    pub name: String,
    /// The versions allowed.
    pub range: VersionReq,
}

impl BlueprintRef {
    /// Parses `name@range` (or just `name`: any version).
    pub fn parse(text: &str) -> Result<BlueprintRef, String> {
        match text.split_once('@') {
            None => Ok(BlueprintRef { name: text.to_string(), range: VersionReq::STAR }),
            // A full version alone pins it exactly (as Terraform and npm read it); Cargo would
            // read `1.2.0` as `^1.2.0`.
            Some((name, range)) if Version::parse(range).is_ok() => VersionReq::parse(&format!("={range}"))
                .map(|range| BlueprintRef { name: name.to_string(), range })
                .map_err(|e| format!("`{range}` is not a version range: {e}")),
            Some((name, range)) => VersionReq::parse(range)
                .map(|range| BlueprintRef { name: name.to_string(), range })
                .map_err(|e| format!("`{range}` is not a version range: {e}")),
        }
    }
}

/// All blueprints found.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Every version of every blueprint, sorted by name then version.
    pub blueprints: Vec<Arc<Blueprint>>,
    folders: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    inputs: Option<Value>,
    #[serde(default)]
    uses: Vec<Use>,
    #[serde(default)]
    outputs: IndexMap<String, String>,
    #[serde(default)]
    upgrade_from: Vec<String>,
}

impl Catalog {
    /// Loads every blueprint under `folders`. A missing folder is an error only when the
    /// stack named it in `spec.catalog` (`named_in` is then the stack document).
    pub fn load(folders: &[PathBuf], named_in: Option<&Document>) -> Result<Catalog, Diagnostics> {
        let mut diags = Diagnostics::new();
        let mut blueprints = Vec::new();
        for (i, folder) in folders.iter().enumerate() {
            if !folder.is_dir() {
                if let Some(stack) = named_in {
                    diags.push(
                        Diagnostic::error(format!("catalog folder `{}` does not exist", folder.display()))
                            .at(stack.locate(&format!("/spec/catalog/{i}")))
                            .field(format!("spec.catalog[{i}]"))
                            .hint("fix `spec.catalog` in the stack (relative to the stack file), or create the folder"),
                    );
                }
                continue;
            }
            for dir in blueprint_dirs(folder) {
                match load_blueprint(&dir) {
                    Ok(bp) => blueprints.push(Arc::new(bp)),
                    Err(d) => diags.extend(d.0),
                }
            }
        }
        blueprints.sort_by(|a: &Arc<Blueprint>, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        for pair in blueprints.windows(2) {
            if pair[0].name == pair[1].name && pair[0].version == pair[1].version {
                diags.push(
                    Diagnostic::error(format!("blueprint `{}` is in the catalog twice", pair[1].id()))
                        .at(Location::file(pair[1].doc.name()))
                        .detail(format!("also in {}", pair[0].dir.display()))
                        .hint("bump the version of one of them, or remove it"),
                );
            }
        }
        diags.into_result(Catalog { blueprints, folders: folders.to_vec() })
    }

    /// The highest version of `reference`'s blueprint that its range allows.
    pub fn resolve(&self, reference: &str) -> Result<Arc<Blueprint>, String> {
        let wanted = BlueprintRef::parse(reference)?;
        let versions: Vec<&Arc<Blueprint>> = self.blueprints.iter().filter(|b| b.name == wanted.name).collect();
        if versions.is_empty() {
            let mut names: Vec<&str> = self.blueprints.iter().map(|b| b.name.as_str()).collect();
            names.dedup();
            let folders: Vec<String> = self.folders.iter().map(|f| f.display().to_string()).collect();
            return Err(format!(
                "no blueprint named `{}` in the catalog ({}); it has: {}",
                wanted.name,
                folders.join(", "),
                if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
            ));
        }
        versions.iter().rev().find(|b| wanted.range.matches(&b.version)).map(|b| Arc::clone(b)).ok_or_else(|| {
            let found: Vec<String> = versions.iter().map(|b| b.version.to_string()).collect();
            format!("no version of `{}` matches `{}`; found: {}", wanted.name, wanted.range, found.join(", "))
        })
    }

    /// The blueprints with this name, oldest first.
    pub fn versions(&self, name: &str) -> Vec<Arc<Blueprint>> {
        self.blueprints.iter().filter(|b| b.name == name).cloned().collect()
    }
}

fn blueprint_dirs(folder: &Path) -> Vec<PathBuf> {
    if folder.join("blueprint.yaml").is_file() {
        return vec![folder.to_path_buf()];
    }
    let mut found = Vec::new();
    for child in sorted_children(folder) {
        if child.join("blueprint.yaml").is_file() {
            found.push(child);
        } else {
            found.extend(sorted_children(&child).into_iter().filter(|c| c.join("blueprint.yaml").is_file()));
        }
    }
    found
}

fn sorted_children(folder: &Path) -> Vec<PathBuf> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    children.sort();
    children
}

fn load_blueprint(dir: &Path) -> Result<Blueprint, Diagnostics> {
    let doc = Document::load(&dir.join("blueprint.yaml"))?;
    let mut diags = Diagnostics::new();
    diags.extend(schema::BLUEPRINT.validate(&doc.value, &doc, ""));
    if diags.has_errors() {
        return Err(diags);
    }
    let meta = &doc.value["metadata"];
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    let version_text = meta["version"].as_str().unwrap_or_default();
    let version = Version::parse(version_text).map_err(|e| {
        Diagnostic::error(format!("`{version_text}` is not a semantic version: {e}"))
            .at(doc.locate("/metadata/version"))
            .field("metadata.version")
            .hint("write MAJOR.MINOR.PATCH, e.g. 1.2.0")
    });
    let raw: RawSpec = serde_json::from_value(doc.value.get("spec").cloned().unwrap_or_else(empty_object))
        .map_err(|e| Diagnostic::error(format!("cannot read the blueprint: {e}")).at(doc.locate("/spec")))?;

    let mut inputs = raw.inputs.unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
    if let Value::Object(map) = &mut inputs
        && !map.contains_key("additionalProperties")
        && !map.contains_key("unevaluatedProperties")
    {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    let inputs_schema = Schema::compile(inputs.clone()).map_err(|e| {
        Diagnostic::error("`spec.inputs` is not a valid JSON Schema")
            .at(doc.locate("/spec/inputs"))
            .field("spec.inputs")
            .detail(e)
    });

    let mut upgrade_from = Vec::new();
    for (i, text) in raw.upgrade_from.iter().enumerate() {
        match VersionReq::parse(text) {
            Ok(r) => upgrade_from.push(r),
            Err(e) => diags.push(
                Diagnostic::error(format!("`{text}` is not a version range: {e}"))
                    .at(doc.locate(&format!("/spec/upgradeFrom/{i}")))
                    .field(format!("spec.upgradeFrom[{i}]")),
            ),
        }
    }
    for (i, u) in raw.uses.iter().enumerate() {
        if let Err(e) = BlueprintRef::parse(&u.blueprint) {
            let at = format!("/spec/uses/{i}/blueprint");
            diags.push(Diagnostic::error(e).at(doc.locate(&at)).field(pointer_to_field(&at)));
        }
    }

    let mut templates = Vec::new();
    let template_dir = dir.join("templates");
    if template_dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&template_dir)
            .map(|e| e.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "j2")) {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match std::fs::read_to_string(&file) {
                Ok(source) => templates.push((name, source)),
                Err(e) => diags.push(
                    Diagnostic::error(format!("cannot read template `{}`", file.display())).detail(e.to_string()),
                ),
            }
        }
    }

    let (version, inputs_schema) = match (version, inputs_schema) {
        (Ok(v), Ok(s)) => (v, s),
        (v, s) => {
            diags.extend(v.err());
            diags.extend(s.err());
            return Err(diags);
        }
    };
    diags.into_result(Blueprint {
        name,
        version,
        description: meta["description"].as_str().unwrap_or_default().to_string(),
        category: meta["category"].as_str().map(String::from),
        inputs,
        inputs_schema,
        uses: raw.uses,
        outputs: raw.outputs,
        upgrade_from,
        dir: dir.to_path_buf(),
        templates,
        doc,
        environment: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = BlueprintRef::parse("node-config@^1.0").unwrap();
        assert_eq!(r.name, "node-config");
        assert!(r.range.matches(&Version::new(1, 4, 0)));
        assert!(!r.range.matches(&Version::new(2, 0, 0)));
        assert_eq!(BlueprintRef::parse("x").unwrap().range, VersionReq::STAR);
        assert!(BlueprintRef::parse("x@not a range").is_err());
        let exact = BlueprintRef::parse("x@1.2.0").unwrap();
        assert!(exact.range.matches(&Version::new(1, 2, 0)));
        assert!(!exact.range.matches(&Version::new(1, 2, 1)));
    }
}
