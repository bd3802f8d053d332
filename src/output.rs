//! What strata shows: plans (human and JSON), apply reports, progress.
//!
//! Sensitive values are shown as `(sensitive)` and unknown values as
//! `(known after apply)`, in the human and the JSON form alike.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Mutex;

use serde_json::{Value, json};
use strata_provider_sdk::unknown;

use crate::apply::{Progress, Report, ResourceReport};
use crate::plan::{Action, Change, Counts, Plan};
use crate::walk::Outcome;

/// Shown for a sensitive value.
pub const SENSITIVE: &str = "(sensitive)";
/// Shown for a value known only after apply.
pub const UNKNOWN: &str = "(known after apply)";

/// Colors on or off.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Use ANSI colors.
    pub color: bool,
}

impl Style {
    /// Colors when `stream_is_terminal` and `NO_COLOR` is not set.
    pub fn detect(stream_is_terminal: bool) -> Style {
        Style { color: stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    fn action(&self, action: Action, text: &str) -> String {
        let code = match action {
            Action::Create => "32",
            Action::Update => "33",
            Action::Replace => "35",
            Action::Delete => "31",
            Action::NoOp => "0",
        };
        self.paint(code, text)
    }
}

fn is_sensitive(pointer: &str, sensitive: &[String]) -> bool {
    sensitive.iter().any(|s| pointer == s || pointer.starts_with(&format!("{s}/")))
}

/// A value as shown: sensitive and unknown parts replaced.
pub fn display_value(value: &Value, pointer: &str, sensitive: &[String]) -> Value {
    if is_sensitive(pointer, sensitive) {
        return Value::String(SENSITIVE.into());
    }
    match value {
        Value::String(s) if unknown::is_unknown_str(s) => Value::String(UNKNOWN.into()),
        Value::Array(items) => Value::Array(
            items.iter().enumerate().map(|(i, v)| display_value(v, &format!("{pointer}/{i}"), sensitive)).collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        display_value(v, &format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")), sensitive),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn leaf_text(value: &Value) -> String {
    match value {
        Value::String(s) if s == SENSITIVE || s == UNKNOWN => s.clone(),
        other => other.to_string(),
    }
}

/// Flattens an object into (dotted path, leaf) pairs; empty objects and arrays are leaves.
fn flatten(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(v, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().any(|v| v.is_object() || v.is_array()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &format!("{path}[{i}]"), out);
            }
        }
        other => out.push((path.to_string(), other.clone())),
    }
}

/// The per-field lines of one change.
fn field_lines(change: &Change, style: &Style) -> Vec<String> {
    let before = change.before.as_ref().map(|v| display_value(v, "", &change.sensitive));
    let after = change.after.as_ref().map(|v| display_value(v, "", &change.sensitive));
    let mut b = Vec::new();
    let mut a = Vec::new();
    if let Some(v) = &before {
        flatten(v, "", &mut b);
    }
    if let Some(v) = &after {
        flatten(v, "", &mut a);
    }
    let before_map: std::collections::BTreeMap<&str, &Value> = b.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let after_map: std::collections::BTreeMap<&str, &Value> = a.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let keys: BTreeSet<&str> = before_map.keys().chain(after_map.keys()).copied().collect();
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    let mut lines = Vec::new();
    for key in keys {
        let line = match (change.action, before_map.get(key), after_map.get(key)) {
            (Action::Create, _, Some(v)) => style.action(Action::Create, &format!("+ {key:width$} = {}", leaf_text(v))),
            (Action::Delete, Some(v), _) => style.action(Action::Delete, &format!("- {key:width$} = {}", leaf_text(v))),
            (_, Some(old), Some(new)) if old == new => continue,
            (_, Some(old), Some(new)) => {
                style.action(Action::Update, &format!("~ {key:width$} = {} -> {}", leaf_text(old), leaf_text(new)))
            }
            (_, None, Some(new)) => style.action(Action::Create, &format!("+ {key:width$} = {}", leaf_text(new))),
            (_, Some(old), None) => style.action(Action::Delete, &format!("- {key:width$} = {}", leaf_text(old))),
            _ => continue,
        };
        lines.push(line);
    }
    lines
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::NoOp => "is unchanged",
        Action::Create => "will be created",
        Action::Update => "will be updated in place",
        Action::Replace => "must be replaced",
        Action::Delete => "will be destroyed",
    }
}

fn counts_line(c: &Counts) -> String {
    format!("{} to create, {} to update, {} to replace, {} to destroy", c.create, c.update, c.replace, c.delete)
}

/// The plan as a person reads it.
pub fn plan_human(plan: &Plan, style: &Style) -> String {
    let mut out = String::new();
    for w in &plan.warnings {
        out.push_str(&format!("{}: {w}\n\n", style.paint("1;33", "warning")));
    }
    if !plan.unplanned.is_empty() {
        out.push_str(&format!(
            "{}: {} resources could not be planned and are left alone this time:\n",
            style.paint("1;31", "error"),
            plan.unplanned.len()
        ));
        for u in &plan.unplanned {
            match &u.because {
                Some(because) => out.push_str(&format!("  ! {} (depends on {because})\n", u.address)),
                None => out.push_str(&format!("  ! {}: {}\n", u.address, u.errors.join("; "))),
            }
        }
        out.push('\n');
    }
    let (total, sites) = plan.counts();
    if !total.any() {
        out.push_str(&format!("No changes. The sites match the stack ({} resources up to date).\n", total.unchanged));
        let refreshes = plan.record_refreshes();
        if refreshes > 0 {
            out.push_str(&format!(
                "{refreshes} resources will be recorded in the state again (left by an interrupted run, or their lifecycle or dependencies changed).\n"
            ));
        }
        return out;
    }
    out.push_str("strata will perform these actions:\n\n");
    for change in plan.changes.iter().filter(|c| c.action != Action::NoOp) {
        out.push_str(&format!("  # {} {}\n", style.paint("1", &change.address), verb(change.action)));
        for reason in &change.reasons {
            out.push_str(&format!("  # ({reason})\n"));
        }
        let header = format!("{:>3} {} {:?}", change.action.symbol(), change.resource_type, change.name);
        out.push_str(&format!("  {}\n", style.action(change.action, &header)));
        for line in field_lines(change, style) {
            out.push_str(&format!("        {line}\n"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{} {}.\n", style.paint("1", "Plan:"), counts_line(&total)));
    for (site, c) in &sites {
        if c.any() {
            out.push_str(&format!("  {site}: {}\n", counts_line(c)));
        }
    }
    out
}

/// The plan as JSON (see docs/plan-json.md): sensitive and unknown values replaced.
pub fn plan_json(plan: &Plan) -> Value {
    let (total, sites) = plan.counts();
    let changes: Vec<Value> = plan
        .changes
        .iter()
        .map(|c| {
            let mut unknown_fields = Vec::new();
            if let Some(after) = &c.after {
                let mut flat = Vec::new();
                flatten(after, "", &mut flat);
                unknown_fields =
                    flat.into_iter().filter(|(_, v)| unknown::contains_unknown(v)).map(|(k, _)| k).collect::<Vec<_>>();
            }
            json!({
                "address": c.address,
                "type": c.resource_type,
                "site": c.site,
                "component": c.component,
                "name": c.name,
                "blueprint": c.blueprint,
                "action": c.action,
                "reasons": c.reasons,
                "before": c.before.as_ref().map(|v| display_value(v, "", &c.sensitive)),
                "after": c.after.as_ref().map(|v| display_value(v, "", &c.sensitive)),
                "afterUnknown": unknown_fields,
                "sensitive": c.sensitive,
                "dependsOn": c.depends_on,
            })
        })
        .collect();
    json!({
        "formatVersion": 1,
        "stack": plan.stack,
        "operation": plan.operation,
        "state": {"lineage": plan.state.lineage, "serial": plan.state.serial},
        "changes": changes,
        "summary": {"total": total, "sites": sites},
        "warnings": plan.warnings,
        "unplanned": plan.unplanned,
    })
}

/// The final report of an apply or destroy.
pub fn report_human(report: &Report, style: &Style) -> String {
    let mut done = Counts::default();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for r in &report.resources {
        match &r.outcome {
            Outcome::Done => match r.action {
                Action::Create => done.create += 1,
                Action::Update => done.update += 1,
                Action::Replace => done.replace += 1,
                Action::Delete => done.delete += 1,
                Action::NoOp => {}
            },
            Outcome::Failed => failed.push(r),
            Outcome::Skipped { because } => skipped.push((r, because)),
        }
    }
    let mut out = String::new();
    let headline = if failed.is_empty() && skipped.is_empty() && report.errors.is_empty() {
        style.paint("1;32", "Apply complete.")
    } else {
        style.paint("1;31", "Apply failed.")
    };
    out.push_str(&format!(
        "\n{headline} {} created, {} updated, {} replaced, {} destroyed; {} failed, {} skipped ({:.1}s)\n",
        done.create,
        done.update,
        done.replace,
        done.delete,
        failed.len(),
        skipped.len(),
        report.elapsed.as_secs_f64()
    ));
    for r in &failed {
        out.push_str(&format!("\n{} {}\n", style.paint("1;31", "failed:"), r.address));
        for d in &r.diagnostics {
            for line in d.render(style.color).lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    if !skipped.is_empty() {
        out.push('\n');
        for (r, because) in &skipped {
            out.push_str(&format!(
                "{} {} (because {because} did not succeed)\n",
                style.paint("1;33", "skipped:"),
                r.address
            ));
        }
    }
    for d in &report.errors {
        out.push_str(&d.render(style.color));
    }
    if !failed.is_empty() || !skipped.is_empty() {
        out.push_str(
            "\nThe state records everything that was done; fix the cause and run `strata apply` again to converge.\n",
        );
    }
    out
}

fn done_verb(action: Action) -> &'static str {
    match action {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Replace => "replaced",
        Action::Delete => "destroyed",
        Action::NoOp => "unchanged",
    }
}

fn doing_verb(action: Action) -> &'static str {
    match action {
        Action::Create => "creating",
        Action::Update => "updating",
        Action::Replace => "replacing",
        Action::Delete => "destroying",
        Action::NoOp => "checking",
    }
}

/// Plain lines on stderr, one when a resource starts and one when it ends.
pub struct LineProgress {
    style: Style,
}

impl LineProgress {
    /// Lines on stderr.
    pub fn new() -> LineProgress {
        LineProgress { style: Style::detect(std::io::stderr().is_terminal()) }
    }
}

impl Default for LineProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for LineProgress {
    fn started(&self, address: &str, action: Action) {
        eprintln!("{address}: {}...", doing_verb(action));
    }

    fn finished(&self, r: &ResourceReport) {
        match &r.outcome {
            Outcome::Done => eprintln!("{}: {} ({:.1}s)", r.address, done_verb(r.action), r.elapsed.as_secs_f64()),
            Outcome::Failed => eprintln!("{}: {}", r.address, self.style.paint("31", "failed")),
            Outcome::Skipped { because } => {
                eprintln!("{}: skipped (because {because} did not succeed)", r.address)
            }
        }
    }
}

/// A progress bar on a terminal, with the finished resources printed above it.
pub struct BarProgress {
    bar: indicatif::ProgressBar,
    running: Mutex<BTreeSet<String>>,
}

impl BarProgress {
    /// A bar for `total` changes.
    pub fn new(total: usize) -> BarProgress {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        BarProgress { bar, running: Mutex::new(BTreeSet::new()) }
    }

    fn message(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let first = running.iter().next().cloned().unwrap_or_default();
        let more = if running.len() > 1 { format!(" (+{} more)", running.len() - 1) } else { String::new() };
        self.bar.set_message(format!("{first}{more}"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for BarProgress {
    fn started(&self, address: &str, _action: Action) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(address.to_string());
        self.message();
    }

    fn finished(&self, r: &ResourceReport) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.address);
        let line = match &r.outcome {
            Outcome::Done => format!("{}: {} ({:.1}s)", r.address, done_verb(r.action), r.elapsed.as_secs_f64()),
            Outcome::Failed => format!("{}: failed", r.address),
            Outcome::Skipped { because } => {
                format!("{}: skipped (because {because} did not succeed)", r.address)
            }
        };
        self.bar.println(line);
        self.bar.inc(1);
        self.message();
    }
}

/// Discards progress (tests, `--json`).
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _: &str, _: Action) {}
    fn finished(&self, _: &ResourceReport) {}
}

/// The rendered resources as a YAML stream, each headed by its address.
pub fn render_yaml(rendered: &crate::render::Rendered) -> String {
    let mut out = String::new();
    for (address, r) in &rendered.resources {
        out.push_str(&format!("---\n# {address} (from {})\n", r.blueprint));
        let mut doc = serde_json::Map::new();
        doc.insert("type".into(), json!(r.resource_type));
        doc.insert("name".into(), json!(r.name));
        doc.insert("spec".into(), display_value(&r.spec, "", &r.sensitive));
        if !r.depends_on.is_empty() {
            doc.insert("dependsOn".into(), json!(r.depends_on));
        }
        if r.lifecycle != Default::default() {
            doc.insert("lifecycle".into(), serde_json::to_value(&r.lifecycle).unwrap_or_default());
        }
        out.push_str(&serde_yaml::to_string(&doc).unwrap_or_default());
    }
    out
}
