//! Rendering: blueprint instances → resources.
//!
//! Each component is rendered once per site it is placed on. A blueprint's children
//! (`uses`) render first, under the component name `<component>.<use>`, and their outputs
//! are `uses.<name>` in the parent's templates. Templates see `inputs`, `site`,
//! `component`, `uses` and the function `ref(address, field)`; undefined values are errors;
//! templates can include only templates of their own blueprint and reach neither the
//! environment nor the filesystem.

pub mod filters;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use minijinja::{Environment, State, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use strata_provider_sdk::unknown;

use crate::catalog::{Blueprint, Catalog};
use crate::diagnostics::{Diagnostic, Diagnostics, Location, pointer_to_field};
use crate::document::Document;
use crate::provider::Registry;
use crate::schema::{self, RESOURCE};
use crate::stack::Stack;

/// How deep `uses` may nest (a blueprint that uses itself stops here).
const MAX_DEPTH: usize = 8;

/// A resource's lifecycle rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    /// Refuse any plan that deletes or replaces it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
    /// On replace, create the new one before deleting the old one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub create_before_destroy: bool,
    /// Spec fields (dotted paths) whose live value is kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_changes: Vec<String>,
}

/// One rendered resource.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// `site/component/type/name`.
    pub address: String,
    /// The site.
    pub site: String,
    /// The component (`base`, or `base.time` for a child).
    pub component: String,
    /// `provider.kind`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Name within the component.
    pub name: String,
    /// `name@version` of the blueprint that made it.
    pub blueprint: String,
    /// The desired spec (may hold reference markers).
    pub spec: Value,
    /// Full addresses it depends on explicitly (references add more, in the graph).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Lifecycle rules.
    #[serde(skip_serializing_if = "is_default")]
    pub lifecycle: Lifecycle,
    /// JSON pointers into `spec` of sensitive values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// The template that made it.
    #[serde(skip)]
    pub origin: Location,
    /// The rendered document it came from, to locate its fields in messages.
    #[serde(skip)]
    pub doc: Option<Arc<Document>>,
}

impl Resource {
    /// Where the field at `pointer` (JSON pointer into the resource document, e.g.
    /// `/spec/content`) was rendered.
    pub fn locate(&self, pointer: &str) -> Location {
        match &self.doc {
            Some(doc) => doc.locate(pointer),
            None => self.origin.clone(),
        }
    }
}

fn is_default(l: &Lifecycle) -> bool {
    l == &Lifecycle::default()
}

/// One component on one site.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// The site.
    pub site: String,
    /// The component name.
    pub component: String,
    /// `name@version`.
    pub blueprint: String,
    /// Its outputs.
    pub outputs: Value,
    /// The addresses of its resources (children's included).
    pub resources: Vec<String>,
}

/// Everything the stack renders to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rendered {
    /// Resources by address, in render order.
    pub resources: IndexMap<String, Resource>,
    /// Component instances.
    pub instances: Vec<Instance>,
}

/// Where a set of values was written, for diagnostics.
struct ValuesOrigin<'a> {
    doc: &'a Document,
    pointer: String,
    /// Sensitive values of the parents: they stay sensitive wherever they are passed.
    secrets: Vec<String>,
}

struct Scope<'a> {
    stack: &'a Stack,
    catalog: &'a Catalog,
    registry: &'a Registry,
    site: &'a str,
}

/// Renders every component of the stack on each of its sites.
pub fn render_stack(stack: &Stack, catalog: &Catalog, registry: &Registry) -> Result<Rendered, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut rendered = Rendered::default();
    for component in &stack.components {
        let at = format!("/spec/components/{}", component.index);
        let blueprint = match catalog.resolve(&component.blueprint) {
            Ok(b) => b,
            Err(e) => {
                diags.push(
                    Diagnostic::error(e)
                        .at(stack.doc.locate(&format!("{at}/blueprint")))
                        .field(pointer_to_field(&format!("{at}/blueprint")))
                        .hint("`strata catalog list` shows every blueprint and version"),
                );
                continue;
            }
        };
        for site in stack.sites_of(component) {
            let scope = Scope { stack, catalog, registry, site };
            let origin = ValuesOrigin { doc: &stack.doc, pointer: format!("{at}/values"), secrets: vec![] };
            let mut instances = Vec::new();
            match render_instance(
                &scope,
                &blueprint,
                &component.name,
                component.values.clone(),
                &origin,
                0,
                &mut instances,
            ) {
                Ok(resources) => {
                    for r in resources {
                        if let Some(first) = rendered.resources.get(&r.address) {
                            diags.push(
                                Diagnostic::error(format!("two resources have the address `{}`", r.address))
                                    .at(r.origin.clone())
                                    .detail(format!("the first came from {}", first.origin.file))
                                    .hint("give them different names"),
                            );
                            continue;
                        }
                        rendered.resources.insert(r.address.clone(), r);
                    }
                    rendered.instances.extend(instances);
                }
                Err(d) => diags.extend(d.0),
            }
        }
    }
    diags.into_result(rendered)
}

fn render_instance(
    scope: &Scope<'_>,
    blueprint: &Arc<Blueprint>,
    component: &str,
    mut values: Value,
    origin: &ValuesOrigin<'_>,
    depth: usize,
    instances: &mut Vec<Instance>,
) -> Result<Vec<Resource>, Diagnostics> {
    let mut diags = Diagnostics::new();
    let site_name = scope.site;
    let site = &scope.stack.sites[site_name];

    schema::apply_defaults(&blueprint.inputs, &mut values);
    for mut d in blueprint.inputs_schema.validate(&values, origin.doc, &origin.pointer) {
        d.summary = d
            .summary
            .replace("missing required field", "missing required input")
            .replace("unknown field", "unknown input");
        d.detail = Some(format!("inputs of blueprint {} ({})", blueprint.id(), blueprint.doc.name()));
        diags.push(d);
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let mut sensitive_values: Vec<String> = schema::write_only_fields(&blueprint.inputs)
        .iter()
        .filter_map(|f| values.get(f).and_then(Value::as_str))
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect();
    sensitive_values.extend(origin.secrets.iter().cloned());

    let env = environment(blueprint);
    let mut context = json!({
        "inputs": values,
        "site": {"name": site_name, "provider": site.provider, "labels": site.labels, "config": site.config},
        "component": {"name": component, "blueprint": blueprint.name, "version": blueprint.version.to_string()},
        "uses": {},
        "providers": scope.registry.data(),
    });

    let mut resources = Vec::new();
    for (i, child_use) in blueprint.uses.iter().enumerate() {
        let at = format!("/spec/uses/{i}");
        if depth + 1 >= MAX_DEPTH {
            diags.push(
                Diagnostic::error(format!("blueprints nest more than {MAX_DEPTH} deep through `uses`"))
                    .at(blueprint.doc.locate(&at))
                    .hint("a blueprint probably uses itself, directly or through another"),
            );
            continue;
        }
        let child = match scope.catalog.resolve(&child_use.blueprint) {
            Ok(c) => c,
            Err(e) => {
                diags.push(
                    Diagnostic::error(e)
                        .at(blueprint.doc.locate(&format!("{at}/blueprint")))
                        .field(format!("spec.uses[{i}].blueprint")),
                );
                continue;
            }
        };
        let child_values = match render_values(env, &child_use.values, &context) {
            Ok(v) => v,
            Err(e) => {
                diags.push(
                    Diagnostic::error(format!("cannot compute the values of `{}`: {}", child_use.name, error_text(&e)))
                        .at(blueprint.doc.locate(&format!("{at}/values")))
                        .field(format!("spec.uses[{i}].values")),
                );
                continue;
            }
        };
        let child_component = format!("{component}.{}", child_use.name);
        let child_origin =
            ValuesOrigin { doc: &blueprint.doc, pointer: format!("{at}/values"), secrets: sensitive_values.clone() };
        match render_instance(scope, &child, &child_component, child_values, &child_origin, depth + 1, instances) {
            Ok(child_resources) => {
                let outputs = instances.last().map(|i| i.outputs.clone()).unwrap_or(Value::Null);
                context["uses"][child_use.name.as_str()] = outputs;
                resources.extend(child_resources);
            }
            Err(d) => diags.extend(d.0),
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }

    let mut own = Vec::new();
    for (name, source) in &blueprint.templates {
        if name.starts_with('_') {
            continue;
        }
        let template_path = blueprint.dir.join("templates").join(name);
        let text = match env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Value::from(minijinja::value::Serde(&context))))
        {
            Ok(text) => text,
            Err(e) => {
                diags.push(template_error(blueprint, name, source, &e));
                continue;
            }
        };
        // Line numbers in messages about rendered documents count lines of the rendered
        // output (what `strata render` prints), not of the template.
        let label =
            PathBuf::from(format!("{} (rendered output for {component} on {site_name})", template_path.display()));
        for (line_offset, part) in split_documents(&text) {
            let doc = match Document::parse_part(&label, part, line_offset) {
                Ok(doc) => doc,
                Err(d) => {
                    diags.extend(d.0.into_iter().map(|d| d.redact(&sensitive_values)));
                    continue;
                }
            };
            if doc.value.is_null() {
                continue;
            }
            match resource_from(scope, blueprint, component, Arc::new(doc), &sensitive_values) {
                Ok(r) => own.push(r),
                Err(d) => diags.extend(d),
            }
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }

    let outputs = match evaluate_outputs(env, blueprint, &context, &own) {
        Ok(o) => o,
        Err(d) => return Err(d.into()),
    };
    let mut addresses: Vec<String> = resources.iter().map(|r: &Resource| r.address.clone()).collect();
    addresses.extend(own.iter().map(|r| r.address.clone()));
    resources.extend(own);
    instances.push(Instance {
        site: site_name.to_string(),
        component: component.to_string(),
        blueprint: blueprint.id(),
        outputs,
        resources: addresses,
    });
    Ok(resources)
}

/// The blueprint's template environment, made once.
fn environment(blueprint: &Blueprint) -> &Environment<'static> {
    blueprint.environment.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_debug(true);
        // Templates write YAML themselves; minijinja would JSON-escape values in `.yaml` files.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_recursion_limit(64);
        // Only the blueprint's own templates exist: no loader, so nothing else can be
        // included, and minijinja has no access to the environment or filesystem.
        for (name, source) in &blueprint.templates {
            // A template that does not parse is reported when it is rendered.
            let _ = env.add_template_owned(name.clone(), source.clone());
        }
        env.add_filter("toyaml", filters::toyaml);
        env.add_filter("b64encode", filters::b64encode);
        env.add_filter("b64decode", filters::b64decode);
        env.add_filter("sha256", filters::sha256);
        env.add_filter("cidrsubnet", filters::cidrsubnet);
        env.add_filter("cidrhost", filters::cidrhost);
        env.add_function("cidrsubnet", filters::cidrsubnet);
        env.add_function("cidrhost", filters::cidrhost);
        env.add_function("ref", reference);
        // `{{ fail("message") }}` stops rendering with that message, as Helm's `fail` does.
        env.add_function("fail", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env
    })
}

/// Renders the strings of every site's `config` that hold `{{ ... }}`: only `ref()` of a
/// full address is there, so that a site can be reached through an output of another
/// resource (a kubeconfig made by a cluster). Returns every problem, located in the stack.
pub fn render_site_configs(stack: &mut Stack) -> Vec<Diagnostic> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_function("ref", |address: String, field: String| -> Result<String, minijinja::Error> {
        let full =
            canonical_address(&address, "", "").ok().filter(|_| address.split('/').count() == 4).ok_or_else(|| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "`{address}` is not a full resource address: a site's config writes `site/component/type/name`"
                    ),
                )
            })?;
        if field.is_empty() || field.contains(unknown::CLOSE) {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("`{field}` is not an output field"),
            ));
        }
        Ok(unknown::marker(&full, &field))
    });
    fn walk(env: &Environment<'_>, value: &mut Value, pointer: String, doc: &Document, out: &mut Vec<Diagnostic>) {
        match value {
            Value::String(s) if s.contains("{{") || s.contains("{%") => match env.render_str(s, ()) {
                Ok(rendered) => *s = rendered,
                Err(e) => out.push(
                    Diagnostic::error(format!(
                        "this site setting does not render: {}",
                        e.detail().unwrap_or(&e.to_string())
                    ))
                    .at(doc.locate(&pointer))
                    .field(crate::diagnostics::pointer_to_field(&pointer))
                    .hint("a site's config may use only `{{ ref(\"site/component/type/name\", \"output\") }}`"),
                ),
            },
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    walk(env, v, format!("{pointer}/{i}"), doc, out);
                }
            }
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    walk(env, v, format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")), doc, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let doc = stack.doc.clone();
    for (name, site) in stack.sites.iter_mut() {
        walk(&env, &mut site.config, format!("/spec/sites/{name}/config"), &doc, &mut out);
    }
    out
}

/// `ref(address, field)`: a marker for an output of another resource.
fn reference(state: &State, address: String, field: String) -> Result<String, minijinja::Error> {
    let lookup = |path: &[&str]| -> Option<String> {
        let mut value = state.lookup(path[0])?;
        for key in &path[1..] {
            value = value.get_attr(key).ok()?;
        }
        value.as_str().map(String::from)
    };
    let site = lookup(&["site", "name"]).unwrap_or_default();
    let component = lookup(&["component", "name"]).unwrap_or_default();
    let full = canonical_address(&address, &site, &component)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))?;
    if field.is_empty() || field.contains(unknown::CLOSE) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`{field}` is not an output field"),
        ));
    }
    Ok(unknown::marker(&full, &field))
}

/// Turns `type/name`, `component/type/name` or `site/component/type/name` into a full
/// address, relative to the given site and component.
pub fn canonical_address(address: &str, site: &str, component: &str) -> Result<String, String> {
    let parts: Vec<&str> = address.split('/').collect();
    let valid = |p: &[&str]| p.iter().all(|s| !s.is_empty()) && p[p.len() - 2].contains('.');
    match parts.len() {
        2 if valid(&parts) => Ok(format!("{site}/{component}/{address}")),
        3 if valid(&parts) => Ok(format!("{site}/{address}")),
        4 if valid(&parts) => Ok(address.to_string()),
        _ => Err(format!(
            "`{address}` is not a resource address: write `type/name`, `component/type/name` or `site/component/type/name`"
        )),
    }
}

/// Renders the values handed to a child: every string is a template over our context; a
/// string that is one `{{ expression }}` keeps the expression's type.
fn render_values(env: &Environment<'static>, values: &Value, context: &Value) -> Result<Value, minijinja::Error> {
    Ok(match values {
        Value::String(s) => match single_expression(s) {
            Some(expr) => serde_json::to_value(
                env.compile_expression(expr)?.eval(minijinja::value::Value::from(minijinja::value::Serde(context)))?,
            )
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::BadSerialization, e.to_string()))?,
            None => Value::String(env.render_str(s, minijinja::value::Value::from(minijinja::value::Serde(context)))?),
        },
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| render_values(env, v, context)).collect::<Result<_, _>>()?)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_values(env, v, context)?)))
                .collect::<Result<_, minijinja::Error>>()?,
        ),
        other => other.clone(),
    })
}

fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner.trim())
}

fn evaluate_outputs(
    env: &Environment<'static>,
    blueprint: &Blueprint,
    context: &Value,
    resources: &[Resource],
) -> Result<Value, Diagnostic> {
    let mut context = context.clone();
    context["resources"] = Value::Array(
        resources
            .iter()
            .map(|r| json!({"type": r.resource_type, "name": r.name, "address": r.address, "spec": r.spec}))
            .collect(),
    );
    let mut outputs = serde_json::Map::new();
    for (name, expression) in &blueprint.outputs {
        let value = render_values(env, &Value::String(expression.clone()), &context).map_err(|e| {
            Diagnostic::error(format!("cannot compute output `{name}`: {}", error_text(&e)))
                .at(blueprint.doc.locate(&format!("/spec/outputs/{name}")))
                .field(format!("spec.outputs.{name}"))
        })?;
        outputs.insert(name.clone(), value);
    }
    Ok(Value::Object(outputs))
}

/// Splits a YAML stream at `---` lines; yields (lines before the part, the part).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            if !current.trim().is_empty() {
                parts.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = i + 1;
            if let Some(rest) = line.strip_prefix("--- ") {
                // `--- value` starts a document on the marker line.
                current.push_str(&" ".repeat(4));
                current.push_str(rest);
                current.push('\n');
                start = i;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    if !current.trim().is_empty() {
        parts.push((start, current));
    }
    parts
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResource {
    #[serde(rename = "type")]
    resource_type: String,
    name: String,
    spec: Value,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    lifecycle: Lifecycle,
}

fn resource_from(
    scope: &Scope<'_>,
    blueprint: &Blueprint,
    component: &str,
    doc: Arc<Document>,
    sensitive_values: &[String],
) -> Result<Resource, Vec<Diagnostic>> {
    let mut diags = RESOURCE.validate(&doc.value, &doc, "");
    if !diags.is_empty() {
        return Err(diags);
    }
    let raw: RawResource = serde_json::from_value(doc.value.clone())
        .map_err(|e| vec![Diagnostic::error(format!("not a resource: {e}")).at(doc.locate(""))])?;
    let site = &scope.stack.sites[scope.site];
    match scope.registry.type_info(&raw.resource_type) {
        None => diags.push(
            Diagnostic::error(format!("unknown resource type `{}`", raw.resource_type))
                .at(doc.locate("/type"))
                .field("type")
                .hint("a type is `provider.kind`, e.g. `local.file`; `strata providers` lists them"),
        ),
        Some(info) if info.provider != site.provider => diags.push(
            Diagnostic::error(format!(
                "`{}` belongs to provider `{}`, but site `{}` uses provider `{}`",
                raw.resource_type, info.provider, scope.site, site.provider
            ))
            .at(doc.locate("/type"))
            .field("type")
            .hint(format!(
                "place this component on a `{}` site, or use `{}.*` types here",
                info.provider, site.provider
            )),
        ),
        Some(info) => {
            for mut d in info.spec.validate_known(&raw.spec, &doc, "/spec") {
                d.detail = Some(format!("schema of `{}` ({})", raw.resource_type, blueprint.id()));
                diags.push(d);
            }
        }
    }
    let mut depends_on = Vec::new();
    for (i, dep) in raw.depends_on.iter().enumerate() {
        match canonical_address(dep, scope.site, component) {
            Ok(a) => depends_on.push(a),
            Err(e) => diags
                .push(Diagnostic::error(e).at(doc.locate(&format!("/dependsOn/{i}"))).field(format!("dependsOn[{i}]"))),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut sensitive = Vec::new();
    if let Some(info) = scope.registry.type_info(&raw.resource_type) {
        for field in &info.write_only {
            if raw.spec.get(field).is_some() {
                sensitive.push(format!("/{field}"));
            }
        }
    }
    if !sensitive_values.is_empty() {
        collect_sensitive(&raw.spec, String::new(), sensitive_values, &mut sensitive);
    }
    sensitive.sort();
    sensitive.dedup();
    Ok(Resource {
        address: format!("{}/{component}/{}/{}", scope.site, raw.resource_type, raw.name),
        site: scope.site.to_string(),
        component: component.to_string(),
        resource_type: raw.resource_type,
        name: raw.name,
        blueprint: blueprint.id(),
        spec: raw.spec,
        depends_on,
        lifecycle: raw.lifecycle,
        sensitive,
        origin: doc.locate("/name"),
        doc: Some(doc),
    })
}

fn collect_sensitive(value: &Value, pointer: String, secrets: &[String], out: &mut Vec<String>) {
    match value {
        Value::String(s) if secrets.iter().any(|secret| s.contains(secret.as_str())) => out.push(pointer),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_sensitive(v, format!("{pointer}/{i}"), secrets, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                collect_sensitive(v, format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")), secrets, out);
            }
        }
        _ => {}
    }
}

fn error_text(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// A template error as a diagnostic on the template's line, with a caret under the span.
fn template_error(blueprint: &Blueprint, name: &str, source: &str, e: &minijinja::Error) -> Diagnostic {
    // The error may come from an included template.
    let (name, source) = match e.name() {
        Some(n) if n != name => match blueprint.templates.iter().find(|(t, _)| t == n) {
            Some((t, s)) => (t.as_str(), s.as_str()),
            None => (name, source),
        },
        _ => (name, source),
    };
    let file = blueprint.dir.join("templates").join(name).display().to_string();
    let location = match (e.line(), e.range()) {
        (_, Some(range)) if range.start <= source.len() => {
            let before = &source[..range.start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
            let column = source[line_start..range.start].chars().count() + 1;
            let text = source.lines().nth(line - 1).unwrap_or_default().to_string();
            let end = range.end.min(line_start + text.len());
            Location {
                file,
                line,
                column,
                length: source[range.start..end.max(range.start)].chars().count().max(1),
                source_line: Some(text),
            }
        }
        (Some(line), _) => Location {
            file,
            line,
            column: 1,
            length: source.lines().nth(line - 1).map(|l| l.chars().count()).unwrap_or(1),
            source_line: source.lines().nth(line - 1).map(String::from),
        },
        _ => Location::file(file),
    };
    let mut d = Diagnostic::error(format!("template error: {}", error_text(e))).at(location);
    d = match e.kind() {
        minijinja::ErrorKind::UndefinedError => d.hint(
            "templates see `inputs`, `site`, `component`, `uses` and `providers`; check the spelling, or test optional values with `is defined`",
        ),
        minijinja::ErrorKind::UnknownFilter | minijinja::ErrorKind::UnknownFunction => {
            d.hint("strata adds `toyaml`, `tojson`, `b64encode`, `b64decode`, `sha256`, `cidrsubnet`, `cidrhost` and `ref()` to minijinja's built-ins")
        }
        minijinja::ErrorKind::TemplateNotFound => d.hint("templates can include only templates of their own blueprint (`templates/`)"),
        _ => d,
    };
    d
}

/// The file a resource came from, for messages.
pub fn origin_file(resource: &Resource) -> &Path {
    Path::new(&resource.origin.file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses() {
        assert_eq!(canonical_address("local.file/a", "lab", "base").unwrap(), "lab/base/local.file/a");
        assert_eq!(canonical_address("other/local.file/a", "lab", "base").unwrap(), "lab/other/local.file/a");
        assert_eq!(canonical_address("s/c/local.file/a", "lab", "base").unwrap(), "s/c/local.file/a");
        assert!(canonical_address("a", "lab", "base").is_err());
        assert!(canonical_address("x/y", "lab", "base").is_err());
    }

    #[test]
    fn splits_streams_keeping_line_numbers() {
        let parts = split_documents("\n---\na: 1\n---\nb: 2\nc: 3\n---\n");
        assert_eq!(parts, vec![(2, "a: 1\n".to_string()), (4, "b: 2\nc: 3\n".to_string())]);
    }

    #[test]
    fn single_expressions_are_recognized() {
        assert_eq!(single_expression("{{ inputs.hosts }}"), Some("inputs.hosts"));
        assert_eq!(single_expression("x {{ a }}"), None);
        assert_eq!(single_expression("{{ a }}-{{ b }}"), None);
    }
}
