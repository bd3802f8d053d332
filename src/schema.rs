//! JSON Schema validation with diagnostics that point into the YAML.
//!
//! The schemas of strata's own documents live in `schemas/` and are compiled into the
//! binary; blueprint inputs and provider resource types bring their own.

use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::diagnostics::{Diagnostic, pointer_to_field};
use crate::document::Document;

/// The schema of a `Stack`.
pub static STACK: LazyLock<Schema> = LazyLock::new(|| Schema::builtin(include_str!("../schemas/stack.json")));
/// The schema of a `Blueprint`.
pub static BLUEPRINT: LazyLock<Schema> = LazyLock::new(|| Schema::builtin(include_str!("../schemas/blueprint.json")));
/// The schema of a rendered resource document.
pub static RESOURCE: LazyLock<Schema> = LazyLock::new(|| Schema::builtin(include_str!("../schemas/resource.json")));

/// A compiled schema with its source (for hints such as the allowed fields).
pub struct Schema {
    source: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("source", &self.source).finish()
    }
}

impl Schema {
    fn builtin(text: &str) -> Schema {
        // The built-in schemas are part of the binary and covered by tests; a broken one is
        // a bug in strata, not something a user can cause.
        let source: Value = serde_json::from_str(text).expect("built-in schema is JSON");
        Schema::compile(source).expect("built-in schema compiles")
    }

    /// Compiles a schema; the error says why it is not a valid schema.
    pub fn compile(source: Value) -> Result<Schema, String> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&source)
            .map_err(|e| e.to_string())?;
        Ok(Schema { source, validator })
    }

    /// The schema document.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// True when `value` is valid.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }

    /// Validates `value`, which sits at `base` (a JSON pointer) inside `doc`, and returns
    /// one diagnostic per problem, each located in the document.
    pub fn validate(&self, value: &Value, doc: &Document, base: &str) -> Vec<Diagnostic> {
        self.validate_inner(value, doc, base, false)
    }

    /// Like [`Schema::validate`], but a value that holds an unknown (a reference not yet
    /// resolved) is not held against the schema: it is checked when it is known.
    pub fn validate_known(&self, value: &Value, doc: &Document, base: &str) -> Vec<Diagnostic> {
        self.validate_inner(value, doc, base, true)
    }

    fn validate_inner(&self, value: &Value, doc: &Document, base: &str, skip_unknown: bool) -> Vec<Diagnostic> {
        if self.validator.is_valid(value) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for error in self.validator.iter_errors(value) {
            if skip_unknown && strata_provider_sdk::unknown::contains_unknown(error.instance()) {
                continue;
            }
            let path = format!("{base}{}", error.instance_path().as_str());
            match error.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected }
                | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                    let allowed = self.allowed_fields(error.schema_path().as_str());
                    for field in unexpected {
                        let at = format!("{path}/{}", field.replace('~', "~0").replace('/', "~1"));
                        let mut d = Diagnostic::error(format!("unknown field `{field}`"))
                            .at(doc.locate_key(&at))
                            .field(pointer_to_field(&at));
                        if !allowed.is_empty() {
                            d = d.hint(format!("allowed here: {}", allowed.join(", ")));
                        }
                        out.push(d);
                    }
                }
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().map(String::from).unwrap_or_else(|| property.to_string());
                    out.push(
                        Diagnostic::error(format!("missing required field `{name}`"))
                            .at(doc.locate(&path))
                            .field(pointer_to_field(&format!("{path}/{name}"))),
                    );
                }
                ValidationErrorKind::OneOfMultipleValid { .. } | ValidationErrorKind::OneOfNotValid { .. }
                    if self.is_site_choice(error.schema_path().as_str()) =>
                {
                    out.push(
                        Diagnostic::error("a component needs exactly one of `site` and `sites`")
                            .at(doc.locate(&path))
                            .field(pointer_to_field(&path))
                            .hint("write `site: NAME` for one site, or `sites: {matchLabels: {...}}` for every site with those labels"),
                    );
                }
                _ => {
                    let message = error.to_string();
                    out.push(
                        Diagnostic::error(format!("invalid value: {message}"))
                            .at(doc.locate(&path))
                            .field(pointer_to_field(&path)),
                    );
                }
            }
        }
        out
    }

    fn is_site_choice(&self, schema_path: &str) -> bool {
        self.source.get("title").and_then(Value::as_str) == Some("Stack") && schema_path.contains("components")
    }

    /// The properties declared next to the keyword at `schema_path`.
    fn allowed_fields(&self, schema_path: &str) -> Vec<String> {
        let parent = schema_path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        self.source
            .pointer(parent)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
            .unwrap_or_default()
    }
}

/// Fills in the `default`s of a schema's properties, recursively, where `value` lacks them.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    let (Some(properties), Value::Object(map)) = (schema.get("properties").and_then(Value::as_object), value) else {
        return;
    };
    for (name, property) in properties {
        match map.get_mut(name) {
            Some(present) => apply_defaults(property, present),
            None => {
                if let Some(default) = property.get("default") {
                    let mut default = default.clone();
                    apply_defaults(property, &mut default);
                    map.insert(name.clone(), default);
                }
            }
        }
    }
}

/// The top-level properties marked `writeOnly: true` (sensitive).
pub fn write_only_fields(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter(|(_, s)| s.get("writeOnly").and_then(Value::as_bool) == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn builtin_schemas_compile() {
        assert!(STACK.source().is_object());
        assert!(BLUEPRINT.source().is_object());
        assert!(RESOURCE.source().is_object());
    }

    #[test]
    fn unknown_field_points_at_the_key_and_lists_allowed_ones() {
        let doc = Document::parse(
            Path::new("stack.yaml"),
            "apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {name: x}\nspec:\n  sitez: {}\n  sites: {a: {provider: local}}\n".into(),
        )
        .unwrap();
        let diags = STACK.validate(&doc.value, &doc, "");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].summary, "unknown field `sitez`");
        let loc = diags[0].location.clone().unwrap();
        assert_eq!((loc.line, loc.column), (5, 3));
        assert!(diags[0].hint.as_deref().unwrap().contains("`sites`"));
    }

    #[test]
    fn defaults_fill_missing_fields_only() {
        let schema = json!({"properties": {"a": {"default": 1}, "b": {"default": 2}, "c": {"properties": {"d": {"default": 3}}, "default": {}}}});
        let mut value = json!({"a": 5});
        apply_defaults(&schema, &mut value);
        assert_eq!(value, json!({"a": 5, "b": 2, "c": {"d": 3}}));
    }
}
