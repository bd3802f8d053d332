//! The contract between the strata engine and its providers.
//!
//! A provider manages resources of one family (`local.*`, `baremetal.*`, `aws.*`, ...) on
//! one **site**. The engine creates one provider instance per site, calls
//! [`Provider::configure`] once with the site's `config`, and then drives each resource
//! through [`Provider::read`], [`Provider::plan`], [`Provider::apply`] and
//! [`Provider::delete`]. Every method takes a request struct and returns a response struct
//! that carries [`Diagnostic`]s: a provider never panics and never returns a bare error.
//!
//! This crate depends on nothing of the engine, so that a provider can be written (and,
//! through the same request and response types serialized as JSON, run out of tree) without
//! pulling the engine in.
//!
//! Values in a desired `spec` may contain **unknowns**: references to outputs of other
//! resources that do not exist yet. They are strings holding a marker (see [`unknown`]);
//! at plan time a provider treats them as "will change", at apply time they are resolved.
#![deny(missing_docs)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod unknown;

#[cfg(feature = "testing")]
pub mod testing;

pub use async_trait::async_trait;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The operation failed.
    Error,
    /// The operation went on, but the user should know.
    Warning,
}

/// A problem found by a provider, in terms a user can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// One line, no trailing period.
    pub summary: String,
    /// More detail (an underlying error message, command output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The field of the resource's `spec` (or the site's `config`) this is about, as a
    /// dotted path (`content`, `rules.0.port`). From a resource's call, `site.FIELD` names
    /// a field of the site's `config` (e.g. credentials found wrong on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What the user can do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// True when retrying the same call later may succeed (throttling, a dropped
    /// connection). The engine retries such errors with backoff.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl Diagnostic {
    /// An error with a summary.
    pub fn error(summary: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            summary: summary.into(),
            detail: None,
            field: None,
            hint: None,
            transient: false,
        }
    }

    /// A warning with a summary.
    pub fn warning(summary: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(summary) }
    }

    /// Adds detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Names the field this is about.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Marks the error as worth retrying.
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }
}

/// An error and its `source()` chain in one line, each cause once (for a diagnostic's
/// summary or detail: client libraries often say "client error" on top and the reason,
/// "Connection refused", three sources down).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// True when any of the diagnostics is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(|d| d.severity == Severity::Error)
}

/// The JSON Schema of one resource type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTypeSchema {
    /// Full type name, `provider.kind` (`local.file`).
    pub name: String,
    /// One line on what it manages.
    pub description: String,
    /// JSON Schema (2020-12) of the resource's `spec`. Fields with `writeOnly: true` are
    /// sensitive and never shown.
    pub spec: Value,
    /// The output fields other resources may `ref()`.
    pub outputs: Vec<String>,
}

/// Everything a provider declares about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSchema {
    /// The provider's name as sites name it (`local`, `aws`).
    pub name: String,
    /// JSON Schema of a site's `config`.
    pub config: Value,
    /// The resource types it manages.
    pub resource_types: Vec<ResourceTypeSchema>,
    /// Static data blueprints may read as `providers.<name>` (e.g. which instance types
    /// carry which GPUs); `null` when there is none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// Configure the provider for one site.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigureRequest {
    /// The site's name in the stack.
    pub site: String,
    /// The stack's name, for ownership tags.
    pub stack: String,
    /// The site's `config`, already validated against [`ProviderSchema::config`].
    pub config: Value,
    /// The folder of the stack file: relative paths in `config` and specs resolve here.
    pub base_dir: PathBuf,
}

/// The answer to [`ConfigureRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigureResponse {
    /// Problems with the configuration.
    pub diagnostics: Vec<Diagnostic>,
    /// At most this many resources of the site may be worked on at once (the engine's
    /// global limit applies too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
}

/// What a provider knows about one existing resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceState {
    /// The provider's id for it (a path, an instance id).
    pub id: String,
    /// The live values, in the shape of the resource's `spec`: the plan diffs the desired
    /// spec against this.
    pub spec: Value,
    /// Output fields (always an object).
    pub outputs: Value,
    /// Opaque data the provider keeps between calls; stored in the state.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub private: Value,
}

/// Identifies the resource a call is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAddress {
    /// Full address, `site/component/type/name`.
    pub address: String,
    /// Type, `provider.kind`.
    pub resource_type: String,
    /// The resource's name within its component.
    pub name: String,
}

/// Read the live state of a resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadRequest {
    /// Which resource.
    pub resource: ResourceAddress,
    /// The desired spec when the resource is in the stack, otherwise the last applied one
    /// (may hold unknowns).
    pub spec: Value,
    /// What the state recorded after the last apply, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<ResourceState>,
}

/// The answer to [`ReadRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadResponse {
    /// Problems reading it.
    pub diagnostics: Vec<Diagnostic>,
    /// The live state, or `None` when the resource does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ResourceState>,
}

/// What must happen to bring a resource to its desired spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum PlannedAction {
    /// Nothing to do.
    NoOp,
    /// It does not exist: create it.
    Create,
    /// Change it in place.
    Update {
        /// RFC 6902 patch from the live spec to the desired one.
        patch: json_patch::Patch,
    },
    /// It must be deleted and created again.
    Replace {
        /// Why (one entry per field that forces it, e.g. "`path` cannot change in place").
        reasons: Vec<String>,
    },
}

/// Plan the change of one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRequest {
    /// Which resource.
    pub resource: ResourceAddress,
    /// The desired spec (may hold unknowns).
    pub desired: Value,
    /// The live state from [`Provider::read`], `None` when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<ResourceState>,
}

/// The answer to [`PlanRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanResponse {
    /// Problems found while planning (invalid values, a missing image).
    pub diagnostics: Vec<Diagnostic>,
    /// What to do.
    pub action: PlannedAction,
    /// The outputs the resource will have; unknown fields hold an unknown marker.
    pub planned_outputs: Value,
    /// Opaque data handed to [`Provider::apply`].
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub private: Value,
}

impl PlanResponse {
    /// A response that only carries diagnostics.
    pub fn failed(diagnostics: Vec<Diagnostic>) -> Self {
        PlanResponse {
            diagnostics,
            action: PlannedAction::NoOp,
            planned_outputs: Value::Object(Default::default()),
            private: Value::Null,
        }
    }
}

/// Create or update one resource. For a replacement the engine calls
/// [`Provider::delete`] and then `apply` with `current: None` (or the other way round for
/// `createBeforeDestroy`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    /// Which resource.
    pub resource: ResourceAddress,
    /// The desired spec, every reference resolved.
    pub desired: Value,
    /// The live state when updating in place; `None` when creating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<ResourceState>,
    /// What [`PlanResponse::private`] held.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub private: Value,
}

/// The answer to [`ApplyRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    /// Problems; with an error, `state` says whether something was left behind.
    pub diagnostics: Vec<Diagnostic>,
    /// The resource as it now exists (also on a partial failure, so the engine records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ResourceState>,
}

/// Delete one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    /// Which resource.
    pub resource: ResourceAddress,
    /// Its state, as recorded or refreshed.
    pub current: ResourceState,
}

/// The answer to [`DeleteRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    /// Problems; no error means it is gone (deleting what is already gone succeeds).
    pub diagnostics: Vec<Diagnostic>,
}

/// Take an existing object under management.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportRequest {
    /// The address it will have.
    pub resource: ResourceAddress,
    /// The provider's id of the existing object.
    pub id: String,
}

/// The answer to [`ImportRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportResponse {
    /// Problems (not found, wrong type).
    pub diagnostics: Vec<Diagnostic>,
    /// What was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ResourceState>,
}

/// A provider, configured for one site.
///
/// Implementations must be cheap to call concurrently: the engine calls `read`, `plan`,
/// `apply` and `delete` for many resources of the same site at once (up to
/// [`ConfigureResponse::max_concurrency`]). Blocking work (an SSH session, a file) belongs
/// on a blocking thread, never on the async runtime.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name, config schema and resource types. Called before `configure`.
    fn schema(&self) -> ProviderSchema;

    /// Configures this instance for one site. Called once, before anything else but
    /// `schema`.
    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse;

    /// Reads the live state of a resource.
    async fn read(&self, request: ReadRequest) -> ReadResponse;

    /// Decides what brings the resource to its desired spec.
    async fn plan(&self, request: PlanRequest) -> PlanResponse;

    /// Creates or updates the resource.
    async fn apply(&self, request: ApplyRequest) -> ApplyResponse;

    /// Deletes the resource.
    async fn delete(&self, request: DeleteRequest) -> DeleteResponse;

    /// Reads an existing object by its provider id, to take it under management.
    async fn import(&self, request: ImportRequest) -> ImportResponse;

    /// Orders resources of one site that the stack leaves unordered, from their specs alone
    /// (a Kubernetes namespace before the objects in it). Called on an unconfigured
    /// instance with every resource of this provider on one site; returns pairs
    /// `(dependent, dependency)` of indexes into `resources`. Most providers need none.
    fn implied_dependencies(&self, resources: &[SpecRef<'_>]) -> Vec<(usize, usize)> {
        let _ = resources;
        Vec::new()
    }
}

/// One resource as [`Provider::implied_dependencies`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct SpecRef<'a> {
    /// Type, `provider.kind`.
    pub resource_type: &'a str,
    /// Its desired spec (may hold unknowns).
    pub spec: &'a Value,
}

/// Makes a fresh, unconfigured provider instance (one per site).
pub type ProviderFactory = fn() -> Box<dyn Provider>;

/// Compile-time check that `T` implements the contract: `assert_provider::<MyProvider>()`
/// in a `const _: () = ...` item of each provider crate.
pub const fn assert_provider<T: Provider + 'static>() {}

/// Computes the RFC 6902 patch that turns `from` into `to`.
pub fn diff(from: &Value, to: &Value) -> json_patch::Patch {
    json_patch::diff(from, to)
}
