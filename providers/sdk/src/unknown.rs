//! Unknown values: references to outputs that do not exist yet.
//!
//! A reference renders to a marker string, `⟪ref:ADDRESS#FIELD⟫`, that may stand alone or
//! sit inside a longer string. The engine resolves markers as soon as the referenced
//! resource's outputs are known; a marker still present at plan time means "known after
//! apply". The brackets are U+27EA and U+27EB, which YAML takes as plain characters in any
//! position, so a marker survives a template's YAML whether it is quoted or not.

use serde_json::Value;

/// Opens a marker.
pub const OPEN: &str = "⟪ref:";
/// Closes a marker.
pub const CLOSE: &str = "⟫";

/// The marker for `field` of the resource at `address`.
pub fn marker(address: &str, field: &str) -> String {
    format!("{OPEN}{address}#{field}{CLOSE}")
}

/// A marker for a value nothing can know before apply (e.g. an id a cloud assigns).
pub fn opaque(address: &str, field: &str) -> Value {
    Value::String(marker(address, field))
}

/// One marker found in a string: its byte range, address and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// Byte range of the whole marker in the string.
    pub range: std::ops::Range<usize>,
    /// The referenced resource's full address.
    pub address: &'a str,
    /// The referenced output field.
    pub field: &'a str,
}

/// Every marker in `text`, in order.
pub fn references(text: &str) -> Vec<Reference<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find(OPEN).map(|i| i + from) {
        let body_start = start + OPEN.len();
        let Some(end) = text[body_start..].find(CLOSE).map(|i| i + body_start) else {
            break;
        };
        let body = &text[body_start..end];
        if let Some((address, field)) = body.split_once('#') {
            found.push(Reference { range: start..end + CLOSE.len(), address, field });
        }
        from = end + CLOSE.len();
    }
    found
}

/// True when the string holds a marker.
pub fn is_unknown_str(text: &str) -> bool {
    text.contains(OPEN)
}

/// True when the value or anything inside it holds a marker.
pub fn contains_unknown(value: &Value) -> bool {
    match value {
        Value::String(s) => is_unknown_str(s),
        Value::Array(items) => items.iter().any(contains_unknown),
        Value::Object(map) => map.values().any(contains_unknown),
        _ => false,
    }
}

/// Calls `visit` with every reference in `value`.
pub fn visit_references<'a>(value: &'a Value, visit: &mut dyn FnMut(Reference<'a>)) {
    match value {
        Value::String(s) => references(s).into_iter().for_each(|r| visit(r)),
        Value::Array(items) => items.iter().for_each(|v| visit_references(v, visit)),
        Value::Object(map) => map.values().for_each(|v| visit_references(v, visit)),
        _ => {}
    }
}

/// Replaces every marker whose value `lookup` knows. A string that is exactly one marker
/// takes the referenced value as it is (a number stays a number); a marker inside a longer
/// string is replaced by the value's text. Markers `lookup` does not know stay.
pub fn resolve(value: &mut Value, lookup: &dyn Fn(&str, &str) -> Option<Value>) {
    match value {
        Value::String(s) => {
            let refs = references(s);
            if refs.is_empty() {
                return;
            }
            if refs.len() == 1 && refs[0].range == (0..s.len()) {
                if let Some(v) = lookup(refs[0].address, refs[0].field) {
                    *value = v;
                }
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for r in &refs {
                out.push_str(&s[last..r.range.start]);
                match lookup(r.address, r.field) {
                    Some(Value::String(text)) => out.push_str(&text),
                    Some(other) => out.push_str(&other.to_string()),
                    None => out.push_str(&s[r.range.clone()]),
                }
                last = r.range.end;
            }
            out.push_str(&s[last..]);
            *s = out;
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve(v, lookup)),
        Value::Object(map) => map.values_mut().for_each(|v| resolve(v, lookup)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_markers_inside_longer_strings() {
        let text = format!("a-{}-b-{}", marker("s/c/t.x/n", "id"), marker("s/c/t.y/m", "ip"));
        let refs = references(&text);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].address, "s/c/t.x/n");
        assert_eq!(refs[1].field, "ip");
    }

    #[test]
    fn resolve_keeps_the_type_of_a_whole_marker_and_leaves_unknown_ones() {
        let mut v = json!({"n": marker("a", "port"), "s": format!("p={}", marker("a", "port")), "u": marker("b", "x")});
        resolve(&mut v, &|addr, _| (addr == "a").then(|| json!(8080)));
        assert_eq!(v["n"], json!(8080));
        assert_eq!(v["s"], json!("p=8080"));
        assert!(contains_unknown(&v["u"]));
        assert!(!contains_unknown(&v["n"]));
    }
}
