//! Apply: carries out a plan with the shared walker, writing the state after every
//! resource.
//!
//! Before acting on a resource, its references are resolved from the outputs its
//! dependencies now have, and the provider plans it again; the new action must agree with
//! the saved one (a resource that another party created or changed since the plan stops
//! there, and says to plan again). Transient provider errors are retried with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_provider_sdk::{
    ApplyRequest, ApplyResponse, DeleteRequest, PlanRequest, PlannedAction, ReadRequest, ResourceAddress,
    ResourceState, unknown,
};

use crate::diagnostics::Diagnostic;
use crate::plan::{Action, Change, Plan, keep_ignored, lookup_field};
use crate::provider::{ConfiguredSite, Readiness};
use crate::state::{Backend, COMPACT_EVERY, Intent, ResourceRecord, State, StateChange};
use crate::walk::{self, Limits, Node, Outcome};
use tracing::Instrument as _;

/// Suffix of the address under which a replaced object waits for its deletion.
pub const DEPOSED: &str = "#deposed";

/// Retries of a transient provider error, after the first attempt.
const RETRIES: u32 = 3;

/// What happened to one resource.
#[derive(Debug, Clone)]
pub struct ResourceReport {
    /// Address.
    pub address: String,
    /// The planned action.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// How long it took.
    pub elapsed: Duration,
}

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per change that was not a no-op, in address order.
    pub resources: Vec<ResourceReport>,
    /// Problems outside any one resource (the state could not be written).
    pub errors: Vec<Diagnostic>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// True when everything succeeded.
    pub fn success(&self) -> bool {
        self.errors.is_empty() && self.resources.iter().all(|r| r.outcome == Outcome::Done)
    }
}

/// Tells a progress display what happens.
pub trait Progress: Send + Sync {
    /// A resource starts.
    fn started(&self, address: &str, action: Action);
    /// A resource ended.
    fn finished(&self, report: &ResourceReport);
}

/// Keeps the state and writes it after every change.
struct Recorder {
    state: Mutex<State>,
    backend: Arc<dyn Backend>,
}

impl Recorder {
    /// Applies a change and records it durably before returning.
    fn record(&self, change: StateChange) -> Result<(), Vec<Diagnostic>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change.apply_to(&mut state);
        let result = if state.serial % COMPACT_EVERY == 0 {
            self.backend.write(&state)
        } else {
            self.backend.record(&change, &state)
        };
        result.map_err(|e| vec![Self::error(e)])
    }

    /// The record at `address`, if any.
    fn get(&self, address: &str) -> Option<ResourceRecord> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).resources.get(address).cloned()
    }

    /// Writes the whole state (compacting any journal).
    fn flush(&self) -> Result<(), Diagnostic> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.backend.write(&state).map_err(Self::error)
    }

    fn error(e: crate::state::Error) -> Diagnostic {
        Diagnostic::error(format!("cannot write the state: {e}"))
            .detail(std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())
            .hint("the change was made but may not be recorded; fix the cause and apply again: strata reads the live state first")
    }
}

/// Applies `plan` to `state`, writing through `backend`. Returns the report and the final
/// state.
pub async fn apply(
    plan: &Plan,
    state: State,
    backend: Arc<dyn Backend>,
    sites: &HashMap<String, ConfiguredSite>,
    limits: &Limits,
    progress: Arc<dyn Progress>,
) -> (Report, State) {
    let started = Instant::now();
    let changes: Arc<Vec<Change>> = Arc::new(plan.changes.clone());
    let index: HashMap<&str, usize> = changes.iter().enumerate().map(|(i, c)| (c.address.as_str(), i)).collect();
    let mut nodes: Vec<Node> = changes
        .iter()
        .map(|c| Node {
            name: c.address.clone(),
            site: c.site.clone(),
            dependencies: if c.action == Action::Delete {
                vec![]
            } else {
                c.depends_on.iter().filter_map(|d| index.get(d.as_str()).copied()).collect()
            },
        })
        .collect();
    // A deletion waits for everything that depended on the deleted resource.
    for (i, c) in changes.iter().enumerate() {
        let prior_deps = state.resources.get(&c.address).map(|r| r.depends_on.clone()).unwrap_or_default();
        for d in prior_deps {
            if let Some(&j) = index.get(d.as_str())
                && changes[j].action == Action::Delete
                && i != j
            {
                nodes[j].dependencies.push(i);
            }
        }
    }

    // A site reached through outputs of other resources: its deletions wait for them too
    // (unless they are deleted themselves), so the site is configured from their new outputs.
    for (i, c) in changes.iter().enumerate() {
        let Some(deferred) = sites.get(&c.site).and_then(|s| s.deferred.as_ref()) else {
            continue;
        };
        for need in deferred.needs() {
            if let Some(&j) = index.get(need.as_str())
                && changes[j].action != Action::Delete
                && i != j
            {
                nodes[i].dependencies.push(j);
            }
        }
    }
    for n in &mut nodes {
        n.dependencies.sort_unstable();
        n.dependencies.dedup();
    }

    let recorder = Arc::new(Recorder { state: Mutex::new(state), backend });
    // Start from a compacted state: the journal then holds only this run's changes.
    let early = recorder.flush().err();
    let outputs: Arc<Mutex<HashMap<String, Value>>> = Arc::new(Mutex::new(HashMap::new()));
    let reports: Arc<Mutex<Vec<Option<ResourceReport>>>> = Arc::new(Mutex::new(vec![None; changes.len()]));
    let outcomes = walk::walk(&nodes, limits, |i| {
        let changes = changes.clone();
        let recorder = recorder.clone();
        let outputs = outputs.clone();
        let reports = reports.clone();
        let progress = progress.clone();
        let site = sites.get(&changes[i].site).cloned();
        async move {
            let change = &changes[i];
            let begun = Instant::now();
            if change.action != Action::NoOp {
                progress.started(&change.address, change.action);
            }
            let result = match site {
                Some(site) => {
                    let lookup = |address: &str, field: &str| -> Option<Value> {
                        let known = outputs.lock().unwrap_or_else(|e| e.into_inner()).get(address).cloned();
                        let known = known.or_else(|| recorder.get(address).map(|r| r.outputs))?;
                        lookup_field(&known, field).cloned()
                    };
                    match site.ready(&lookup).await {
                        Ok(Readiness::Ready) => {
                            apply_one(change, &site, &recorder, &outputs)
                                .instrument(
                                    tracing::info_span!("apply", address = %change.address, action = ?change.action),
                                )
                                .await
                        }
                        Ok(Readiness::Waiting(needs)) => Err(vec![
                            Diagnostic::error(format!(
                                "site `{}` cannot be reached: its config needs outputs of {} that are still unknown",
                                change.site,
                                needs.join(", ")
                            ))
                            .hint("check that those resources were applied and report the outputs the site's config names"),
                        ]),
                        Err(d) => Err(d),
                    }
                }
                None => Err(vec![Diagnostic::error(format!("site `{}` is not configured", change.site))]),
            };
            // Provider messages may quote what they were given: sensitive values never show.
            let secrets =
                crate::diagnostics::secrets_at(change.after.as_ref().or(change.before.as_ref()), &change.sensitive);
            let result = result.map_err(|d| d.into_iter().map(|d| d.redact(&secrets)).collect::<Vec<_>>());
            let ok = result.is_ok();
            let report = ResourceReport {
                address: change.address.clone(),
                action: change.action,
                outcome: if ok { Outcome::Done } else { Outcome::Failed },
                diagnostics: result.err().unwrap_or_default(),
                elapsed: begun.elapsed(),
            };
            if change.action != Action::NoOp {
                progress.finished(&report);
            }
            reports.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(report);
            ok
        }
    })
    .await;

    let mut reports = std::mem::take(&mut *reports.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = Report::default();
    report.errors.extend(early);
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let entry = reports[i].take().unwrap_or_else(|| ResourceReport {
            address: changes[i].address.clone(),
            action: changes[i].action,
            outcome: outcome.clone(),
            diagnostics: vec![],
            elapsed: Duration::ZERO,
        });
        if let Outcome::Skipped { .. } = &outcome
            && changes[i].action != Action::NoOp
        {
            progress.finished(&entry);
        }
        // Unchanged resources appear only when recording them failed.
        if changes[i].action != Action::NoOp || entry.outcome == Outcome::Failed {
            report.resources.push(entry);
        }
    }
    for u in &plan.unplanned {
        report.resources.push(ResourceReport {
            address: u.address.clone(),
            action: Action::NoOp,
            outcome: match &u.because {
                Some(because) => Outcome::Skipped { because: because.clone() },
                None => Outcome::Failed,
            },
            diagnostics: u.errors.iter().map(|e| Diagnostic::error(e.clone())).collect(),
            elapsed: Duration::ZERO,
        });
    }
    report.resources.sort_by(|a, b| a.address.cmp(&b.address));
    report.elapsed = started.elapsed();
    if let Err(d) = recorder.flush() {
        report.errors.push(d);
    }
    let state = recorder.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
    (report, state)
}

fn resource_of(change: &Change) -> ResourceAddress {
    ResourceAddress {
        address: change.address.clone(),
        resource_type: change.resource_type.clone(),
        name: change.name.clone(),
    }
}

fn convert(
    address: &str,
    diagnostics: Vec<strata_provider_sdk::Diagnostic>,
) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
    let failed = strata_provider_sdk::has_errors(&diagnostics);
    let converted = diagnostics.into_iter().map(|d| Diagnostic::from_provider(d, address)).collect();
    if failed { Err(converted) } else { Ok(converted) }
}

fn log_warnings(warnings: Vec<Diagnostic>) {
    for w in warnings {
        tracing::warn!("{}", w.summary);
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn record_of(change: &Change, spec: Value, state: ResourceState) -> ResourceRecord {
    ResourceRecord {
        resource_type: change.resource_type.clone(),
        site: change.site.clone(),
        component: change.component.clone(),
        name: change.name.clone(),
        blueprint: change.blueprint.clone(),
        id: state.id,
        spec,
        outputs: state.outputs,
        private: state.private,
        depends_on: change.depends_on.clone(),
        lifecycle: change.lifecycle.clone(),
        sensitive: change.sensitive.clone(),
    }
}

/// Calls the provider until it succeeds, fails for good, or the retries are spent.
async fn with_retries<T, F, Fut>(mut call: F, diagnostics_of: fn(&T) -> &[strata_provider_sdk::Diagnostic]) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut attempt = 0;
    loop {
        let response = call().await;
        let diagnostics = diagnostics_of(&response);
        let transient = strata_provider_sdk::has_errors(diagnostics)
            && diagnostics.iter().filter(|d| d.severity == strata_provider_sdk::Severity::Error).all(|d| d.transient);
        if !transient || attempt >= RETRIES {
            return response;
        }
        attempt += 1;
        let delay = Duration::from_millis(200 * (1 << attempt));
        tracing::info!(attempt, ?delay, "transient provider error; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Deletes one object through the provider, retrying transient errors.
async fn delete_object(site: &ConfiguredSite, change: &Change, object: ResourceState) -> Result<(), Vec<Diagnostic>> {
    let response = with_retries(
        || site.provider.delete(DeleteRequest { resource: resource_of(change), current: object.clone() }),
        |r| &r.diagnostics,
    )
    .await;
    convert(&change.address, response.diagnostics).map(|_| ())
}

async fn apply_one(
    change: &Change,
    site: &ConfiguredSite,
    recorder: &Recorder,
    outputs: &Mutex<HashMap<String, Value>>,
) -> Result<(), Vec<Diagnostic>> {
    let provider = &site.provider;
    let address = &change.address;
    let publish = |values: &Value| {
        outputs.lock().unwrap_or_else(|e| e.into_inner()).insert(address.clone(), values.clone());
    };

    if change.action == Action::NoOp {
        publish(&change.planned_outputs);
        if change.refresh_record
            && let Some(current) = change.current.clone()
        {
            let mut spec = change.after.clone().unwrap_or(Value::Null);
            let known = outputs.lock().unwrap_or_else(|e| e.into_inner()).clone();
            unknown::resolve(&mut spec, &|target, field| lookup_field(known.get(target)?, field).cloned());
            let record = record_of(change, spec, current);
            recorder.record(StateChange::Put { address: address.clone(), record: Box::new(record) })?;
        }
        return Ok(());
    }
    if change.action == Action::Delete {
        let Some(current) = change.current.clone() else {
            recorder.record(StateChange::Remove { address: address.clone() })?;
            return Ok(());
        };
        delete_object(site, change, current).await?;
        recorder.record(StateChange::Remove { address: address.clone() })?;
        return Ok(());
    }

    // Resolve references from what the dependencies have now.
    let mut desired = change.after.clone().unwrap_or(Value::Null);
    {
        let known = outputs.lock().unwrap_or_else(|e| e.into_inner());
        unknown::resolve(&mut desired, &|target, field| lookup_field(known.get(target)?, field).cloned());
    }
    if unknown::contains_unknown(&desired) {
        let mut missing = Vec::new();
        unknown::visit_references(&desired, &mut |r| missing.push(format!("{}#{}", r.address, r.field)));
        return Err(vec![
            Diagnostic::error(format!(
                "`{address}` refers to outputs that are still unknown after their resources were applied"
            ))
            .detail(missing.join("\n"))
            .hint("the referenced resource does not report that output; check the field name"),
        ]);
    }

    // Plan again against the live state, and check it agrees with the saved plan.
    let read = provider
        .read(ReadRequest { resource: resource_of(change), spec: desired.clone(), prior: change.current.clone() })
        .await;
    log_warnings(convert(address, read.diagnostics)?);
    let current = read.state;
    if let Some(current) = &current
        && !change.lifecycle.ignore_changes.is_empty()
    {
        keep_ignored(&mut desired, &current.spec, &change.lifecycle.ignore_changes);
    }
    let replanned = provider
        .plan(PlanRequest { resource: resource_of(change), desired: desired.clone(), current: current.clone() })
        .await;
    log_warnings(convert(address, replanned.diagnostics)?);
    let stale = |now: &str| {
        vec![
            Diagnostic::error(
                format!(
                    "`{address}` changed since the plan: it was planned to {:?}, and now needs {now}",
                    change.action
                )
                .to_lowercase(),
            )
            .hint("run `strata plan` again"),
        ]
    };
    let replace = match (change.action, &replanned.action) {
        (_, PlannedAction::NoOp) => {
            // Already as desired (e.g. made by an interrupted run): record it.
            if let Some(current) = current {
                publish(&current.outputs);
                let record = record_of(change, desired, current);
                recorder.record(StateChange::Put { address: address.clone(), record: Box::new(record) })?;
            }
            return Ok(());
        }
        (_, PlannedAction::Create) => false,
        (Action::Update, PlannedAction::Update { .. }) => false,
        // Planned before the site could be read: do what it needs now.
        (_, PlannedAction::Update { .. }) if change.unread => false,
        (_, PlannedAction::Replace { reasons }) if change.unread => {
            if change.lifecycle.prevent_destroy {
                return Err(vec![
                    Diagnostic::error(format!(
                        "`{address}` has `lifecycle.preventDestroy` set, and it now needs a replacement"
                    ))
                    .detail(reasons.join("\n"))
                    .hint("if that is really meant, remove `preventDestroy` from its template first and apply that"),
                ]);
            }
            true
        }
        (Action::Replace, PlannedAction::Replace { .. }) => true,
        // A replacement planned on an unknown value that turned out unchanged: update.
        (Action::Replace, PlannedAction::Update { .. }) => false,
        (_, PlannedAction::Update { .. }) => return Err(stale("an update")),
        (_, PlannedAction::Replace { .. }) => return Err(stale("a replacement")),
    };
    let private = if replanned.private.is_null() { change.private.clone() } else { replanned.private };

    let create_first = replace && change.lifecycle.create_before_destroy;
    if replace && !create_first {
        if let Some(old) = current.clone() {
            delete_object(site, change, old).await?;
            recorder.record(StateChange::Remove { address: address.clone() })?;
        }
    }
    // Create-before-destroy: until the old object is gone, the state keeps it as
    // `ADDRESS#deposed`, so a failed or interrupted delete leaves it on record (the next
    // plan deletes it) instead of orphaned.
    let deposed = format!("{address}{DEPOSED}");
    if create_first && let Some(old_record) = recorder.get(address) {
        recorder.record(StateChange::Put { address: deposed.clone(), record: Box::new(old_record) })?;
    }
    let creating = current.is_none() || replace;
    if creating {
        recorder.record(StateChange::Intend {
            address: address.clone(),
            intent: Intent { action: if replace { "replace" } else { "create" }.into(), since: now() },
        })?;
    }
    let response: ApplyResponse = with_retries(
        || {
            provider.apply(ApplyRequest {
                resource: resource_of(change),
                desired: desired.clone(),
                current: if creating { None } else { current.clone() },
                private: private.clone(),
            })
        },
        |r| &r.diagnostics,
    )
    .await;
    let result = convert(address, response.diagnostics);
    match (response.state, &result) {
        (Some(new_state), _) => {
            publish(&new_state.outputs);
            let new_id = new_state.id.clone();
            let record = record_of(change, desired, new_state);
            recorder.record(StateChange::Put { address: address.clone(), record: Box::new(record) })?;
            if create_first && result.is_ok() {
                if let Some(old) = current.filter(|old| old.id != new_id) {
                    delete_object(site, change, old).await?;
                }
                if recorder.get(&deposed).is_some() {
                    recorder.record(StateChange::Remove { address: deposed })?;
                }
            }
        }
        (None, _) if creating => {
            // Nothing was made: the intent is void.
            recorder.record(StateChange::Forget { address: address.clone() })?;
        }
        (None, _) => {}
    }
    result.map(|_| ())
}
