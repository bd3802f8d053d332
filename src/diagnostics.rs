//! Problems a person can act on: what, where (file:line:column and field), and what to do.
//!
//! Every stage collects [`Diagnostic`]s instead of stopping at the first problem, and
//! returns them all as [`Diagnostics`].

use std::fmt;

use serde::Serialize;

pub use strata_provider_sdk::Severity;

/// A place in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file, as the user named it (or a template's name).
    pub file: String,
    /// 1-based line; 0 when only the file is known.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// How many characters to underline.
    pub length: usize,
    /// The text of the line, for the snippet.
    #[serde(skip)]
    pub source_line: Option<String>,
}

impl Location {
    /// Only the file.
    pub fn file(file: impl Into<String>) -> Self {
        Location { file: file.into(), line: 0, column: 0, length: 0, source_line: None }
    }
}

/// One problem.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One line, no trailing period, literals in backticks.
    pub summary: String,
    /// Where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The field, as a path (`spec.components[0].values.hosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// More text (a pre-rendered snippet, command output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// A provider said retrying later may succeed (a host that is down).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl Diagnostic {
    /// An error.
    pub fn error(summary: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            summary: summary.into(),
            location: None,
            field: None,
            detail: None,
            hint: None,
            transient: false,
        }
    }

    /// A warning.
    pub fn warning(summary: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(summary) }
    }

    /// Sets the location.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// Sets the field.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Turns a provider's diagnostic into ours, about the resource at `address`.
    pub fn from_provider(d: strata_provider_sdk::Diagnostic, address: &str) -> Self {
        Diagnostic {
            severity: d.severity,
            summary: format!("{address}: {}", d.summary),
            location: None,
            field: d.field.map(|f| format!("spec.{f}")),
            detail: d.detail,
            hint: d.hint,
            transient: d.transient,
        }
    }

    /// Replaces every occurrence of a secret in the text it shows by `(sensitive)`.
    pub fn redact(mut self, secrets: &[String]) -> Self {
        let scrub = |text: &mut String| {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if text.contains(secret.as_str()) {
                    *text = text.replace(secret.as_str(), "(sensitive)");
                }
            }
        };
        scrub(&mut self.summary);
        if let Some(detail) = &mut self.detail {
            scrub(detail);
        }
        if let Some(line) = self.location.as_mut().and_then(|l| l.source_line.as_mut()) {
            scrub(line);
        }
        self
    }

    /// Writes it the way a compiler does, with colors when `color` is true.
    pub fn render(&self, color: bool) -> String {
        let paint = |code: &str, text: &str| {
            if color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
        };
        let (label, code) = match self.severity {
            Severity::Error => ("error", "1;31"),
            Severity::Warning => ("warning", "1;33"),
        };
        let mut out = format!("{}: {}\n", paint(code, label), paint("1", &self.summary));
        if let Some(loc) = &self.location {
            if loc.line == 0 {
                out.push_str(&format!("  --> {}\n", loc.file));
            } else {
                out.push_str(&format!("  --> {}:{}:{}\n", loc.file, loc.line, loc.column));
                if let Some(text) = &loc.source_line {
                    let number = loc.line.to_string();
                    let pad = " ".repeat(number.len());
                    let caret_pad: String = text
                        .chars()
                        .take(loc.column.saturating_sub(1))
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    out.push_str(&format!(
                        "{pad} |\n{number} | {text}\n{pad} | {caret_pad}{}\n",
                        paint(code, &"^".repeat(loc.length.max(1)))
                    ));
                }
            }
        }
        if let Some(field) = &self.field {
            out.push_str(&format!("   = field: {field}\n"));
        }
        if let Some(detail) = &self.detail {
            for line in detail.trim_end().lines() {
                out.push_str(&format!("   | {line}\n"));
            }
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("   = {}: {hint}\n", paint("1;36", "hint")));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

/// Several problems; an error when at least one is an error.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// No problems yet.
    pub fn new() -> Self {
        Diagnostics(Vec::new())
    }

    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Adds many.
    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(other);
    }

    /// True when one of them is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// `Err(self)` when there are errors, else `Ok(value)` (warnings are dropped; callers
    /// that show warnings take them first).
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.has_errors() { Err(self) } else { Ok(value) }
    }

    /// Renders them all, then a count.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for d in &self.0 {
            out.push_str(&d.render(color));
            out.push('\n');
        }
        let errors = self.0.iter().filter(|d| d.severity == Severity::Error).count();
        if errors > 1 {
            out.push_str(&format!("{errors} errors\n"));
        }
        out
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

/// Folds diagnostics that say the same thing about several resources (`ADDRESS: message`,
/// e.g. one unreachable host) into one that lists them.
pub fn collapse(diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let mut addresses: Vec<Vec<String>> = Vec::new();
    for d in diagnostics {
        let Some((address, message)) = d.summary.split_once(": ").filter(|(a, _)| a.split('/').count() == 4) else {
            out.push(d);
            addresses.push(vec![]);
            continue;
        };
        let (address, message) = (address.to_string(), message.to_string());
        let same = out.iter().position(|o| {
            o.location.is_none()
                && o.hint == d.hint
                && o.summary.split_once(": ").map(|(_, m)| m) == Some(message.as_str())
        });
        match same {
            Some(i) => addresses[i].push(address),
            None => {
                out.push(d);
                addresses.push(vec![address]);
            }
        }
    }
    for (d, addresses) in out.iter_mut().zip(addresses) {
        if addresses.len() > 1 {
            if let Some((_, message)) = d.summary.split_once(": ") {
                d.summary = message.to_string();
            }
            let list = addresses.join("\n");
            d.detail = Some(match d.detail.take() {
                Some(detail) => format!("{detail}\nfor {} resources:\n{list}", addresses.len()),
                None => format!("for {} resources:\n{list}", addresses.len()),
            });
        }
    }
    out
}

/// The string values at `pointers` inside `value` (the secrets of a resource's spec).
pub fn secrets_at(value: Option<&serde_json::Value>, pointers: &[String]) -> Vec<String> {
    let Some(value) = value else { return vec![] };
    let mut out = Vec::new();
    for pointer in pointers {
        if let Some(v) = value.pointer(pointer) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                other => out.push(other.to_string()),
            }
        }
    }
    out
}

/// A JSON pointer (`/spec/components/0/values`) as a user reads it
/// (`spec.components[0].values`).
pub fn pointer_to_field(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_reads_as_a_path() {
        assert_eq!(pointer_to_field("/spec/components/0/values/hosts"), "spec.components[0].values.hosts");
        assert_eq!(pointer_to_field("/a~1b"), "a/b");
        assert_eq!(pointer_to_field(""), "");
    }

    #[test]
    fn renders_a_caret_under_the_span() {
        let d = Diagnostic::error("unknown field `hostz`")
            .at(Location {
                file: "stack.yaml".into(),
                line: 3,
                column: 7,
                length: 5,
                source_line: Some("      hostz: [a]".into()),
            })
            .hint("remove it");
        let text = d.render(false);
        assert!(text.contains("--> stack.yaml:3:7"), "{text}");
        assert!(text.contains("3 |       hostz: [a]\n  |       ^^^^^"), "{text}");
    }
}
