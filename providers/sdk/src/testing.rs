//! An in-memory provider for engine tests and benchmarks (feature `testing`).
//!
//! It manages `memory.object` resources whose `spec` is any object. Objects live in a
//! process-wide store, partitioned by the site config's `namespace`, so two engine runs in
//! the same test see the same objects. It is a stand-in for engine tests only: providers
//! with a real peer are tested against that peer.
//!
//! Failure injection, through fields of the spec that it does not store:
//! `failApply: "message"` makes every apply fail; `transientFailures: N` makes the first N
//! applies of that address fail with a transient error.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::*;

static STORE: LazyLock<Mutex<HashMap<String, Value>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
/// What happened, in order, per namespace: `apply ADDRESS` and `delete ADDRESS`.
static EVENTS: LazyLock<Mutex<Vec<(String, String)>>> = LazyLock::new(|| Mutex::new(Vec::new()));
/// Apply attempts per key, for `transientFailures`.
static ATTEMPTS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The in-memory provider, named `memory`.
#[derive(Default)]
pub struct MemoryProvider {
    namespace: OnceLock<String>,
}

/// Makes a [`MemoryProvider`]; a [`ProviderFactory`].
pub fn factory() -> Box<dyn Provider> {
    Box::new(MemoryProvider::default())
}

const _: () = assert_provider::<MemoryProvider>();

const INJECTION_FIELDS: [&str; 2] = ["failApply", "transientFailures"];

fn stored_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Value::Object(map) = &mut spec {
        for field in INJECTION_FIELDS {
            map.remove(field);
        }
    }
    spec
}

fn outputs(id: &str, spec: &Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), json!(id));
    if let Value::Object(map) = spec {
        for (k, v) in map {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

impl MemoryProvider {
    fn key(&self, address: &str) -> String {
        format!("{}|{}", self.namespace.get().map(String::as_str).unwrap_or(""), address)
    }

    /// Every object of a namespace (for assertions in tests).
    pub fn objects(namespace: &str) -> HashMap<String, Value> {
        let prefix = format!("{namespace}|");
        let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        store.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|a| (a.to_string(), v.clone()))).collect()
    }

    /// The applies and deletes of a namespace, in order (`apply ADDRESS`, `delete ADDRESS`).
    pub fn events(namespace: &str) -> Vec<String> {
        let events = EVENTS.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().filter(|(n, _)| n == namespace).map(|(_, e)| e.clone()).collect()
    }

    fn log(&self, event: String) {
        let namespace = self.namespace.get().cloned().unwrap_or_default();
        EVENTS.lock().unwrap_or_else(|e| e.into_inner()).push((namespace, event));
    }

    /// Changes an object behind the engine's back (drift, in tests).
    pub fn set_object(namespace: &str, address: &str, spec: Value) {
        let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        store.insert(format!("{namespace}|{address}"), spec);
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: "memory".into(),
            config: json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"namespace": {"type": "string"}}
            }),
            resource_types: vec![ResourceTypeSchema {
                name: "memory.object".into(),
                description: "An object kept in memory (tests only)".into(),
                spec: json!({"type": "object"}),
                outputs: vec!["id".into()],
            }],
            data: Value::Null,
        }
    }

    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse {
        let namespace = request.config.get("namespace").and_then(Value::as_str).unwrap_or("");
        let _ = self.namespace.set(namespace.to_string());
        ConfigureResponse::default()
    }

    async fn read(&self, request: ReadRequest) -> ReadResponse {
        let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        let state = store.get(&self.key(&request.resource.address)).map(|spec| ResourceState {
            id: request.resource.address.clone(),
            spec: spec.clone(),
            outputs: outputs(&request.resource.address, spec),
            private: Value::Null,
        });
        ReadResponse { diagnostics: vec![], state }
    }

    async fn plan(&self, request: PlanRequest) -> PlanResponse {
        let desired = stored_spec(&request.desired);
        let address = &request.resource.address;
        let action = match &request.current {
            None => PlannedAction::Create,
            Some(current) if current.spec == desired => PlannedAction::NoOp,
            Some(current) => {
                if current.spec.get("immutable") != desired.get("immutable") {
                    PlannedAction::Replace { reasons: vec!["`immutable` cannot change in place".into()] }
                } else {
                    PlannedAction::Update { patch: diff(&current.spec, &desired) }
                }
            }
        };
        PlanResponse { diagnostics: vec![], action, planned_outputs: outputs(address, &desired), private: Value::Null }
    }

    async fn apply(&self, request: ApplyRequest) -> ApplyResponse {
        let address = request.resource.address.clone();
        let key = self.key(&address);
        let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(message) = request.desired.get("failApply").and_then(Value::as_str) {
            return ApplyResponse { diagnostics: vec![Diagnostic::error(message)], state: None };
        }
        let wanted = request.desired.get("transientFailures").and_then(Value::as_u64).unwrap_or(0);
        let mut attempts = ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner());
        let count = attempts.entry(key.clone()).or_insert(0);
        if *count < wanted {
            *count += 1;
            return ApplyResponse {
                diagnostics: vec![Diagnostic::error("simulated throttling").transient()],
                state: None,
            };
        }
        let spec = stored_spec(&request.desired);
        store.insert(key, spec.clone());
        self.log(format!("apply {address}"));
        ApplyResponse {
            diagnostics: vec![],
            state: Some(ResourceState {
                id: address.clone(),
                outputs: outputs(&address, &spec),
                spec,
                private: Value::Null,
            }),
        }
    }

    async fn delete(&self, request: DeleteRequest) -> DeleteResponse {
        let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        store.remove(&self.key(&request.resource.address));
        self.log(format!("delete {}", request.resource.address));
        DeleteResponse::default()
    }

    async fn import(&self, request: ImportRequest) -> ImportResponse {
        let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        match store.get(&self.key(&request.id)) {
            Some(spec) => ImportResponse {
                diagnostics: vec![],
                state: Some(ResourceState {
                    id: request.id.clone(),
                    spec: spec.clone(),
                    outputs: outputs(&request.id, spec),
                    private: Value::Null,
                }),
            },
            None => ImportResponse {
                diagnostics: vec![Diagnostic::error(format!("no object `{}` in memory", request.id))],
                state: None,
            },
        }
    }
}
