//! Template filters: `toyaml`, `b64encode`, `b64decode`, `sha256`, `cidrsubnet`,
//! `cidrhost` (`tojson` is minijinja's own). `cidrsubnet` and `cidrhost` follow
//! Terraform's functions of the same name.

use std::net::IpAddr;

use base64::Engine as _;
use minijinja::{Error, ErrorKind, Value};
use sha2::{Digest, Sha256};

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// Serializes a value as YAML (no document marker, no trailing newline), for use with
/// `indent`.
pub fn toyaml(value: Value) -> Result<String, Error> {
    let text = serde_yaml::to_string(&value).map_err(|e| invalid(format!("cannot write YAML: {e}")))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// Base64 (standard alphabet, padded).
pub fn b64encode(text: String) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// Decodes base64 into text.
pub fn b64decode(text: String) -> Result<String, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| invalid(format!("not base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| invalid("the decoded bytes are not UTF-8 text".into()))
}

/// Lowercase hex SHA-256 of the text.
pub fn sha256(text: String) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

struct Prefix {
    address: u128,
    length: u32,
    bits: u32,
    v4: bool,
}

fn parse_prefix(text: &str) -> Result<Prefix, Error> {
    let (address, length) =
        text.split_once('/').ok_or_else(|| invalid(format!("`{text}` is not a CIDR prefix like 10.0.0.0/16")))?;
    let address: IpAddr = address.parse().map_err(|_| invalid(format!("`{address}` is not an IP address")))?;
    let length: u32 = length.parse().map_err(|_| invalid(format!("`{length}` is not a prefix length")))?;
    let (value, bits, v4) = match address {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32, true),
        IpAddr::V6(a) => (u128::from(a), 128, false),
    };
    if length > bits {
        return Err(invalid(format!("prefix length {length} is longer than {bits} bits")));
    }
    let mask = if length == 0 { 0 } else { (!0u128) << (bits - length) & low_bits(bits) };
    Ok(Prefix { address: value & mask, length, bits, v4 })
}

fn low_bits(bits: u32) -> u128 {
    if bits == 128 { !0 } else { (1u128 << bits) - 1 }
}

fn format_address(value: u128, v4: bool) -> String {
    if v4 { std::net::Ipv4Addr::from(value as u32).to_string() } else { std::net::Ipv6Addr::from(value).to_string() }
}

/// `cidrsubnet("10.0.0.0/16", 8, 2)` → `10.0.2.0/24`.
pub fn cidrsubnet(prefix: String, newbits: u32, netnum: u64) -> Result<String, Error> {
    let p = parse_prefix(&prefix)?;
    let Some(length) = p.length.checked_add(newbits).filter(|l| *l <= p.bits) else {
        return Err(invalid(format!("`{prefix}` has no room for {newbits} more bits")));
    };
    if newbits < 64 && u128::from(netnum) >= (1u128 << newbits) {
        return Err(invalid(format!("network number {netnum} does not fit in {newbits} bits")));
    }
    let address = p.address | (u128::from(netnum) << (p.bits - length));
    Ok(format!("{}/{length}", format_address(address, p.v4)))
}

/// `cidrhost("10.0.2.0/24", 5)` → `10.0.2.5`; a negative number counts from the end.
pub fn cidrhost(prefix: String, hostnum: i64) -> Result<String, Error> {
    let p = parse_prefix(&prefix)?;
    let host_bits = p.bits - p.length;
    let size: u128 = if host_bits == 128 { u128::MAX } else { 1u128 << host_bits };
    let offset = if hostnum >= 0 {
        u128::from(hostnum.unsigned_abs())
    } else {
        size.checked_sub(u128::from(hostnum.unsigned_abs()))
            .ok_or_else(|| invalid(format!("host number {hostnum} is outside `{prefix}`")))?
    };
    if offset >= size {
        return Err(invalid(format!("host number {hostnum} is outside `{prefix}`")));
    }
    Ok(format_address(p.address | offset, p.v4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_functions_match_terraform() {
        assert_eq!(cidrsubnet("10.0.0.0/16".into(), 8, 2).unwrap(), "10.0.2.0/24");
        assert_eq!(cidrsubnet("172.16.0.0/12".into(), 4, 15).unwrap(), "172.31.0.0/16");
        assert_eq!(cidrsubnet("fd00:fd12:3456:7890::/56".into(), 16, 162).unwrap(), "fd00:fd12:3456:7800:a200::/72");
        assert!(cidrsubnet("10.0.0.0/30".into(), 4, 1).is_err());
        assert!(cidrsubnet("10.0.0.0/16".into(), 2, 4).is_err());
        // Regression: an absurd `newbits` overflowed the prefix length and panicked.
        assert!(cidrsubnet("10.0.0.0/16".into(), u32::MAX, 0).is_err());
        assert_eq!(cidrhost("10.12.112.0/20".into(), 16).unwrap(), "10.12.112.16");
        assert_eq!(cidrhost("10.12.112.0/20".into(), 268).unwrap(), "10.12.113.12");
        assert_eq!(cidrhost("10.0.0.0/24".into(), -1).unwrap(), "10.0.0.255");
        assert!(cidrhost("10.0.0.0/24".into(), 256).is_err());
        assert!(cidrhost("nonsense".into(), 1).is_err());
    }

    #[test]
    fn encodings() {
        assert_eq!(b64encode("hi".into()), "aGk=");
        assert_eq!(b64decode("aGk=".into()).unwrap(), "hi");
        assert_eq!(sha256("".into()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(
            toyaml(Value::from(minijinja::value::Serde(serde_json::json!({"a": [1, 2]})))).unwrap(),
            "a:\n- 1\n- 2"
        );
    }
}
