//! Loading YAML documents, keeping where every value came from.
//!
//! Values are parsed with `serde_yaml` into JSON values (what the schemas and templates
//! work on); a second pass with `marked-yaml` records the line and column of every key and
//! value by JSON pointer, so that any later stage can say where a field is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::diagnostics::{Diagnostic, Diagnostics, Location};

/// Where a key and its value are, 1-based.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    key: Option<(usize, usize, usize)>,
    value: (usize, usize, usize),
}

/// A parsed YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file as the user named it.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Its value.
    pub value: Value,
    /// Added to every line number (a document cut out of a longer text).
    pub line_offset: usize,
    /// Key and value places by JSON pointer, made on first use (only errors need them).
    spans: std::sync::OnceLock<HashMap<String, Span>>,
}

impl Document {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Document, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostic::error(format!("cannot read `{}`", path.display())).detail(e.to_string()).hint(
                if e.kind() == std::io::ErrorKind::NotFound {
                    "check the path, or pass another file with `--stack FILE`"
                } else {
                    "check that the file is readable"
                },
            )
        })?;
        Document::parse(path, text)
    }

    /// Parses YAML text that came from `path` (a file or a template's name).
    pub fn parse(path: &Path, text: String) -> Result<Document, Diagnostics> {
        let value: Value = match serde_yaml::from_str::<Value>(&text) {
            Ok(v) => v,
            Err(e) => return Err(yaml_error(path, &text, &e).into()),
        };
        Ok(Document { path: path.to_path_buf(), text, value, line_offset: 0, spans: Default::default() })
    }

    /// Parses one document cut out of a longer text, whose first line is line
    /// `line_offset + 1` of `path`.
    pub fn parse_part(path: &Path, text: String, line_offset: usize) -> Result<Document, Diagnostics> {
        match Document::parse(path, text.clone()) {
            Ok(mut doc) => {
                doc.line_offset = line_offset;
                Ok(doc)
            }
            Err(mut diags) => {
                for d in &mut diags.0 {
                    if let Some(loc) = &mut d.location
                        && loc.line > 0
                    {
                        loc.line += line_offset;
                    }
                }
                Err(diags)
            }
        }
    }

    fn spans(&self) -> &HashMap<String, Span> {
        self.spans.get_or_init(|| {
            let mut spans = HashMap::new();
            if let Ok(node) = marked_yaml::parse_yaml_with_options(
                0,
                &self.text,
                marked_yaml::LoaderOptions::default().error_on_duplicate_keys(false),
            ) {
                index(&node, String::new(), None, &self.text, &mut spans);
            }
            spans
        })
    }

    /// The file name for messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn location_of(&self, (line, column, length): (usize, usize, usize)) -> Location {
        Location {
            file: self.name(),
            line: if line == 0 { 0 } else { line + self.line_offset },
            column,
            length,
            source_line: self.text.lines().nth(line.saturating_sub(1)).map(String::from),
        }
    }

    /// Where the value at `pointer` is; the nearest parent that has a place when it has
    /// none (a missing field points at its object).
    pub fn locate(&self, pointer: &str) -> Location {
        if self.spans().is_empty() && !pointer.is_empty() {
            return self.search(pointer);
        }
        let mut pointer = pointer;
        loop {
            if let Some(span) = self.spans().get(pointer) {
                return self.location_of(span.value);
            }
            match pointer.rfind('/') {
                Some(i) => pointer = &pointer[..i],
                None => return Location::file(self.name()),
            }
        }
    }

    /// When the precise index cannot be made (`marked-yaml` does not take anchors and
    /// aliases), the first line where the field's key appears, after its parents' keys.
    fn search(&self, pointer: &str) -> Location {
        let mut from_line = 0;
        let mut found = None;
        for segment in pointer.split('/').skip(1) {
            let key = segment.replace("~1", "/").replace("~0", "~");
            if key.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let hit = self.text.lines().enumerate().skip(from_line).find_map(|(i, line)| {
                let at = line.find(&format!("{key}:"))?;
                let before = line[..at].chars().last();
                before.is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-').then_some((i, at))
            });
            if let Some((i, at)) = hit {
                from_line = i;
                found = Some((i + 1, line_column(&self.text, i, at), key.chars().count()));
            }
        }
        match found {
            Some(place) => self.location_of(place),
            None => Location::file(self.name()),
        }
    }

    /// Where the key of the field at `pointer` is (the value when it has no key).
    pub fn locate_key(&self, pointer: &str) -> Location {
        match self.spans().get(pointer).and_then(|s| s.key) {
            Some(key) => self.location_of(key),
            None => self.locate(pointer),
        }
    }
}

/// The 1-based column of byte offset `at` in line `index` (0-based).
fn line_column(text: &str, index: usize, at: usize) -> usize {
    text.lines().nth(index).map(|l| l[..at.min(l.len())].chars().count() + 1).unwrap_or(1)
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn length_on_line(text: &str, span: &marked_yaml::Span) -> usize {
    match (span.start(), span.end()) {
        (Some(s), Some(e)) if s.line() == e.line() && e.column() > s.column() => e.column() - s.column(),
        (Some(s), _) => text
            .lines()
            .nth(s.line().saturating_sub(1))
            .map(|l| l.chars().count().saturating_sub(s.column().saturating_sub(1)).max(1))
            .unwrap_or(1),
        _ => 1,
    }
}

fn start(text: &str, span: &marked_yaml::Span) -> Option<(usize, usize, usize)> {
    span.start().map(|m| (m.line(), m.column(), length_on_line(text, span)))
}

fn index(
    node: &marked_yaml::Node,
    pointer: String,
    key: Option<(usize, usize, usize)>,
    text: &str,
    spans: &mut HashMap<String, Span>,
) {
    let mut value = start(text, node.span()).or(key).unwrap_or((0, 0, 0));
    if let marked_yaml::Node::Scalar(scalar) = node {
        // A scalar's span has no end: underline its text (and quotes, when the source has them).
        let quoted = text
            .lines()
            .nth(value.0.saturating_sub(1))
            .and_then(|l| l.chars().nth(value.1.saturating_sub(1)))
            .is_some_and(|c| c == '"' || c == '\'');
        value.2 = scalar.as_str().chars().count().max(1) + if quoted { 2 } else { 0 };
    }
    spans.insert(pointer.clone(), Span { key, value });
    match node {
        marked_yaml::Node::Mapping(map) => {
            for (k, v) in map.iter() {
                let key_span = start(text, k.span()).map(|(l, c, _)| (l, c, k.as_str().chars().count().max(1)));
                index(v, format!("{pointer}/{}", escape(k.as_str())), key_span, text, spans);
            }
        }
        marked_yaml::Node::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                index(v, format!("{pointer}/{i}"), None, text, spans);
            }
        }
        marked_yaml::Node::Scalar(_) => {}
    }
}

/// A YAML syntax error as a diagnostic at its line and column.
pub fn yaml_error(path: &Path, text: &str, e: &serde_yaml::Error) -> Diagnostic {
    let message = e.to_string();
    // serde_yaml appends " at line L column C"; the location says that already.
    let summary = message.split(" at line ").next().unwrap_or(&message).to_string();
    let mut d = Diagnostic::error(format!("invalid YAML: {summary}"))
        .hint("check the indentation and quoting around this place; a value with `: ` or starting with `{`, `[`, `*` or `&` needs quotes");
    match e.location() {
        Some(loc) => {
            d = d.at(Location {
                file: path.display().to_string(),
                line: loc.line(),
                column: loc.column(),
                length: 1,
                source_line: text.lines().nth(loc.line().saturating_sub(1)).map(String::from),
            })
        }
        None => d = d.at(Location::file(path.display().to_string())),
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_and_values_by_pointer() {
        let text = "a:\n  b: [1, 2]\n  c:\n    - x: y\n".to_string();
        let doc = Document::parse(Path::new("f.yaml"), text).unwrap();
        let b = doc.locate("/a/b/1");
        assert_eq!((b.line, b.column), (2, 10));
        let x = doc.locate_key("/a/c/0/x");
        assert_eq!((x.line, x.column, x.length), (4, 7, 1));
        let missing = doc.locate("/a/c/0/nothing");
        assert_eq!(missing.line, 4);
    }

    #[test]
    fn bad_yaml_names_line_and_column() {
        let err = Document::parse(Path::new("f.yaml"), "a: [1, 2\nb: c\n".into()).unwrap_err();
        let loc = err.0[0].location.clone().unwrap();
        assert_eq!(loc.file, "f.yaml");
        assert!(loc.line >= 1, "{loc:?}");
    }
}
