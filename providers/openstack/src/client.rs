//! Requests to the OpenStack APIs through `openstack_sdk`'s session: it authenticates
//! (clouds.yaml, `OS_*` variables, password or application credential against Keystone v3),
//! finds each service in the catalog by region and interface, sets the compute
//! microversion, and re-authenticates when a token has expired (a 401). This module only
//! shapes the JSON requests and turns answers into values or diagnostics.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, Method};
use openstack_sdk::AsyncOpenStack;
use openstack_sdk::api::{QueryAsync, QueryParams, RestEndpoint, raw};
use openstack_sdk::types::{ApiVersion, ServiceType};
use serde_json::Value;
use strata_provider_sdk::Diagnostic;

/// The compute API microversion strata speaks: tags at creation (2.52), flavors with their
/// extra specs (2.61).
pub const COMPUTE_MICROVERSION: (u8, u8) = (2, 61);

/// Which API a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Nova.
    Compute,
    /// Neutron (`/v2.0`).
    Network,
    /// Glance (`/v2`).
    Image,
}

struct Call {
    method: Method,
    service: Service,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    headers: HeaderMap,
}

impl Service {
    /// The catalog's service type.
    pub fn service_type(self) -> ServiceType {
        match self {
            Service::Compute => ServiceType::Compute,
            Service::Network => ServiceType::Network,
            Service::Image => ServiceType::Image,
        }
    }
}

impl RestEndpoint for Call {
    fn method(&self) -> Method {
        self.method.clone()
    }

    fn endpoint(&self) -> Cow<'static, str> {
        self.path.clone().into()
    }

    fn service_type(&self) -> ServiceType {
        self.service.service_type()
    }

    fn parameters(&self) -> QueryParams<'_> {
        let mut params = QueryParams::default();
        for (k, v) in &self.query {
            params.push(k.as_str(), v.as_str());
        }
        params
    }

    fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, openstack_sdk::api::BodyError> {
        Ok(self.body.as_ref().map(|b| ("application/json", serde_json::to_vec(b).unwrap_or_default())))
    }

    fn request_headers(&self) -> Option<&HeaderMap> {
        Some(&self.headers)
    }

    fn api_version(&self) -> Option<ApiVersion> {
        Some(match self.service {
            Service::Compute => ApiVersion::new(COMPUTE_MICROVERSION.0, COMPUTE_MICROVERSION.1),
            Service::Network => ApiVersion::new(2, 0),
            Service::Image => ApiVersion::new(2, 0),
        })
    }
}

/// A failed request: the HTTP status and the service's own message, or no answer at all.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The service answered with an error status.
    Status {
        /// HTTP status.
        code: u16,
        /// The service's message.
        message: String,
    },
    /// No usable answer (unreachable, not in the catalog, ...).
    Other(Diagnostic),
}

impl Failure {
    /// True for "not found".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Failure::Status { code: 404, .. })
    }

    /// As a diagnostic: `what` failed, and why.
    pub fn into_diagnostic(self, what: &str) -> Diagnostic {
        match self {
            Failure::Status { code, message } => {
                let d = Diagnostic::error(format!("{what}: {message}")).with_detail(format!("HTTP {code}"));
                match code {
                    401 => d.with_hint("the cloud refused the credentials: check the password or application credential of the site's cloud"),
                    403 => d.with_hint("the project's user may not do this: ask the cloud's operators for the role, or use another cloud entry"),
                    409 | 429 | 500 | 502 | 503 | 504 => d.transient(),
                    _ => d,
                }
            }
            Failure::Other(d) => Diagnostic { summary: format!("{what}: {}", d.summary), ..d },
        }
    }
}

/// The message in an OpenStack error body (`{"NeutronError": {"message"}}`,
/// `{"badRequest": {"message"}}`, `{"error": {"message"}}`, ...), or the body itself.
pub fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).trim().to_string();
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return if text.is_empty() { "(no message)".into() } else { text.chars().take(500).collect() };
    };
    fn find(v: &Value) -> Option<String> {
        match v {
            Value::Object(map) => {
                if let Some(m) = map.get("message").and_then(Value::as_str) {
                    return Some(m.to_string());
                }
                if let Some(m) = map.get("faultstring").and_then(Value::as_str) {
                    return Some(m.to_string());
                }
                map.values().find_map(find)
            }
            _ => None,
        }
    }
    find(&value).unwrap_or(text)
}

/// Sends one request; the answer's JSON (`Null` when empty).
pub async fn send(
    client: &Arc<AsyncOpenStack>,
    calls: &AtomicU64,
    method: Method,
    service: Service,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> Result<Value, Failure> {
    calls.fetch_add(1, Ordering::Relaxed);
    let mut headers = HeaderMap::new();
    if service == Service::Compute {
        let version = format!("compute {}.{}", COMPUTE_MICROVERSION.0, COMPUTE_MICROVERSION.1);
        if let Ok(v) = version.parse() {
            headers.insert("OpenStack-API-Version", v);
        }
    }
    let call = Call {
        method,
        service,
        path: path.to_string(),
        query: query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        body,
        headers,
    };
    let response: http::Response<bytes::Bytes> =
        raw(call).skip_error_check(true).query_async(client.as_ref()).await.map_err(|e| {
            let text = strata_provider_sdk::error_chain(&e);
            let d = Diagnostic::error(format!("no answer from the {service:?} API: {text}"));
            Failure::Other(if text.contains("catalog") || text.contains("Catalog") {
                d.with_hint("the service is not in the cloud's catalog for this region and interface")
            } else {
                d.transient().with_hint("check that the cloud's endpoints are reachable from here")
            })
        })?;
    let status = response.status().as_u16();
    let body = response.body();
    if status >= 400 {
        return Err(Failure::Status { code: status, message: error_message(body) });
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        Failure::Other(Diagnostic::error(format!("the {service:?} API answered something that is not JSON: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_of_every_error_shape() {
        assert_eq!(
            error_message(br#"{"NeutronError": {"type": "InvalidInput", "message": "Invalid input for operation: 'x' is not a valid IP subnet.", "detail": ""}}"#),
            "Invalid input for operation: 'x' is not a valid IP subnet."
        );
        assert_eq!(
            error_message(br#"{"badRequest": {"code": 400, "message": "Invalid flavorRef provided."}}"#),
            "Invalid flavorRef provided."
        );
        assert_eq!(error_message(br#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#), "The request you have made requires authentication.");
        assert_eq!(error_message(b"<html>502 Bad Gateway</html>"), "<html>502 Bad Gateway</html>");
    }
}
