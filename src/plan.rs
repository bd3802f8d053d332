//! Plans: what apply will do, resource by resource.
//!
//! Planning walks the graph (the same walker apply uses): each resource is read through its
//! provider, its references are resolved where the referenced outputs are already known,
//! and the provider decides the action. Resources in the state that the stack no longer
//! renders are planned for deletion. A plan can be saved (`--out`) and applied exactly,
//! as long as the state has not moved since.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_provider_sdk::{PlanRequest, PlannedAction, ReadRequest, ResourceAddress, ResourceState, unknown};

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::graph::Graph;
use crate::provider::{ConfiguredSite, Readiness, SiteConnection};
use crate::render::{Lifecycle, Rendered};
use crate::state::State;
use crate::walk::{self, Limits, Node, Outcome};
use tracing::Instrument as _;

/// The format tag of saved plans.
pub const PLAN_FORMAT: &str = "strata-plan/v1";

/// What happens to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Nothing.
    NoOp,
    /// Created.
    Create,
    /// Changed in place.
    Update,
    /// Deleted and created again (or created, then the old one deleted).
    Replace,
    /// Deleted.
    Delete,
}

impl Action {
    /// `+`, `~`, `-/+`, `-`, or a blank for no-op.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// Apply the stack, or destroy everything it manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Converge to the stack.
    Apply,
    /// Delete everything in the state.
    Destroy,
}

/// The planned change of one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `site/component/type/name`.
    pub address: String,
    /// `provider.kind`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Site.
    pub site: String,
    /// Component.
    pub component: String,
    /// Name.
    pub name: String,
    /// `name@version` of the blueprint.
    pub blueprint: String,
    /// What happens.
    pub action: Action,
    /// Why it is replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The live spec (none when it does not exist).
    pub before: Option<Value>,
    /// The desired spec (none for a delete); unknown values hold markers.
    pub after: Option<Value>,
    /// The outputs it will have.
    pub planned_outputs: Value,
    /// What it depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Its lifecycle rules.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Sensitive fields of its spec (JSON pointers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// The live state the plan was made against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<ResourceState>,
    /// The provider's private data for apply.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub private: Value,
    /// For a no-op: the state's record of it is missing (an interrupted create left it
    /// behind) or outdated (its lifecycle, dependencies or blueprint changed), so apply
    /// records it again without touching the site.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_record: bool,
    /// Planned without reading the resource, because its site's connection was not known
    /// yet: apply carries out whatever the live state then needs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unread: bool,
}

/// The state a plan was made against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRef {
    /// Lineage, none when there was no state yet.
    pub lineage: Option<String>,
    /// Serial (0 when there was no state yet).
    pub serial: u64,
    /// Where the state is.
    pub path: String,
}

/// A whole plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: String,
    /// The stack's name.
    pub stack: String,
    /// Apply or destroy.
    pub operation: Operation,
    /// The state it was made against.
    pub state: StateRef,
    /// How to reach every site of the plan.
    pub sites: IndexMap<String, SiteConnection>,
    /// Every resource's change, in address order.
    pub changes: Vec<Change>,
    /// Warnings found while planning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Resources that could not be planned because their site or host could not be
    /// reached (and those depending on them). They are left alone; the rest goes ahead,
    /// as a fleet tool must when one host of many is down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplanned: Vec<Unplanned>,
}

/// A resource left out of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unplanned {
    /// Its address.
    pub address: String,
    /// Its site.
    pub site: String,
    /// Why: the provider's messages (empty when it depends on another unplanned resource).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The unplanned resource it depends on, when that is why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
}

/// Counts of changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// To create.
    pub create: usize,
    /// To update.
    pub update: usize,
    /// To replace.
    pub replace: usize,
    /// To delete.
    pub delete: usize,
    /// Unchanged.
    pub unchanged: usize,
}

impl Counts {
    fn add(&mut self, action: Action) {
        match action {
            Action::NoOp => self.unchanged += 1,
            Action::Create => self.create += 1,
            Action::Update => self.update += 1,
            Action::Replace => self.replace += 1,
            Action::Delete => self.delete += 1,
        }
    }

    /// True when something changes.
    pub fn any(&self) -> bool {
        self.create + self.update + self.replace + self.delete > 0
    }
}

impl Plan {
    /// True when applying it changes something on a site.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::NoOp)
    }

    /// How many no-op resources only need their state record written again.
    pub fn record_refreshes(&self) -> usize {
        self.changes.iter().filter(|c| c.refresh_record).count()
    }

    /// Counts overall and per site.
    pub fn counts(&self) -> (Counts, BTreeMap<String, Counts>) {
        let mut total = Counts::default();
        let mut sites: BTreeMap<String, Counts> = BTreeMap::new();
        for c in &self.changes {
            total.add(c.action);
            sites.entry(c.site.clone()).or_default().add(c.action);
        }
        (total, sites)
    }
}

/// What planning needs.
pub struct PlanInput<'a> {
    /// The stack's name.
    pub stack: &'a str,
    /// The rendered stack (ignored when destroying).
    pub rendered: &'a Rendered,
    /// Its graph.
    pub graph: &'a Graph,
    /// The current state.
    pub state: Option<&'a State>,
    /// Where the state is.
    pub state_path: String,
    /// Configured providers by site.
    pub sites: &'a HashMap<String, ConfiguredSite>,
    /// How to reach every site.
    pub connections: &'a IndexMap<String, SiteConnection>,
    /// Apply or destroy.
    pub operation: Operation,
    /// Limits of the walk.
    pub limits: &'a Limits,
}

/// One resource to plan.
#[derive(Clone)]
struct Item {
    address: String,
    resource_type: String,
    site: String,
    component: String,
    name: String,
    blueprint: String,
    /// Desired spec; `None` to delete.
    desired: Option<Value>,
    depends_on: Vec<String>,
    lifecycle: Lifecycle,
    sensitive: Vec<String>,
    prior: Option<ResourceState>,
}

impl Item {
    /// The change of this resource, with what the provider decided.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        action: Action,
        reasons: Vec<String>,
        live: Option<&ResourceState>,
        after: Option<Value>,
        planned_outputs: Value,
        current: Option<ResourceState>,
        private: Value,
    ) -> Change {
        Change {
            address: self.address.clone(),
            resource_type: self.resource_type.clone(),
            site: self.site.clone(),
            component: self.component.clone(),
            name: self.name.clone(),
            blueprint: self.blueprint.clone(),
            action,
            reasons,
            before: live.map(|c| c.spec.clone()),
            after,
            planned_outputs,
            depends_on: self.depends_on.clone(),
            lifecycle: self.lifecycle.clone(),
            sensitive: self.sensitive.clone(),
            current,
            private,
            refresh_record: false,
            unread: false,
        }
    }

    fn resource(&self) -> ResourceAddress {
        ResourceAddress {
            address: self.address.clone(),
            resource_type: self.resource_type.clone(),
            name: self.name.clone(),
        }
    }
}

/// Builds the walk's nodes: desired resources depend on their dependencies; a deletion
/// waits for everything that depended on the deleted resource when it was applied.
fn nodes_of(items: &[Item], prior_dependencies: &dyn Fn(&str) -> Vec<String>) -> Vec<Node> {
    let index: HashMap<&str, usize> = items.iter().enumerate().map(|(i, it)| (it.address.as_str(), i)).collect();
    let mut nodes: Vec<Node> =
        items.iter().map(|it| Node { name: it.address.clone(), site: it.site.clone(), dependencies: vec![] }).collect();
    for (i, it) in items.iter().enumerate() {
        if it.desired.is_some() {
            nodes[i].dependencies.extend(it.depends_on.iter().filter_map(|d| index.get(d.as_str()).copied()));
        }
        // Whatever depended on `it` in the state must be done (updated or deleted) before a
        // deletion of `it`... so a deletion of `d` waits for `i` when `i` depended on `d`.
        for d in prior_dependencies(&it.address) {
            if let Some(&j) = index.get(d.as_str())
                && items[j].desired.is_none()
                && j != i
            {
                nodes[j].dependencies.push(i);
            }
        }
    }
    for n in &mut nodes {
        n.dependencies.sort_unstable();
        n.dependencies.dedup();
    }
    nodes
}

/// Makes a plan.
pub async fn make_plan(input: PlanInput<'_>) -> Result<Plan, Diagnostics> {
    let empty = State::new(input.stack);
    let state = input.state.unwrap_or(&empty);
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    if input.operation == Operation::Apply {
        for (address, r) in &input.rendered.resources {
            items.push(Item {
                address: address.clone(),
                resource_type: r.resource_type.clone(),
                site: r.site.clone(),
                component: r.component.clone(),
                name: r.name.clone(),
                blueprint: r.blueprint.clone(),
                desired: Some(r.spec.clone()),
                depends_on: input.graph.dependencies(address).into_iter().map(String::from).collect(),
                lifecycle: r.lifecycle.clone(),
                sensitive: r.sensitive.clone(),
                prior: state.resources.get(address).map(|rec| rec.provider_state()),
            });
        }
    }
    for (address, rec) in &state.resources {
        if input.operation == Operation::Apply && input.rendered.resources.contains_key(address) {
            continue;
        }
        items.push(Item {
            address: address.clone(),
            resource_type: rec.resource_type.clone(),
            site: rec.site.clone(),
            component: rec.component.clone(),
            name: rec.name.clone(),
            blueprint: rec.blueprint.clone(),
            desired: None,
            depends_on: rec.depends_on.clone(),
            lifecycle: rec.lifecycle.clone(),
            sensitive: rec.sensitive.clone(),
            prior: Some(rec.provider_state()),
        });
    }
    for (address, intent) in &state.intents {
        warnings.push(format!(
            "a {} of `{address}` begun at {} was interrupted; its live state was read again",
            intent.action, intent.since
        ));
    }
    let mut nodes =
        nodes_of(&items, &|address| state.resources.get(address).map(|r| r.depends_on.clone()).unwrap_or_default());
    // A site reached through outputs of other resources: everything on it, deletions too,
    // waits for those resources (unless they are being deleted themselves), so that the site
    // is never configured from outputs about to change.
    let suppliers: HashMap<&str, Vec<String>> = input
        .sites
        .iter()
        .filter_map(|(name, site)| site.deferred.as_ref().map(|d| (name.as_str(), d.needs())))
        .collect();
    if !suppliers.is_empty() {
        let index: HashMap<&str, usize> = items.iter().enumerate().map(|(i, it)| (it.address.as_str(), i)).collect();
        for (i, it) in items.iter().enumerate() {
            for need in suppliers.get(it.site.as_str()).into_iter().flatten() {
                if let Some(&j) = index.get(need.as_str())
                    && items[j].desired.is_some()
                    && j != i
                {
                    nodes[i].dependencies.push(j);
                }
            }
        }
        for n in &mut nodes {
            n.dependencies.sort_unstable();
            n.dependencies.dedup();
        }
    }

    let items = Arc::new(items);
    let known: Arc<Mutex<HashMap<String, Value>>> = Arc::new(Mutex::new(HashMap::new()));
    let results: Arc<Mutex<Vec<Option<Result<Change, Vec<Diagnostic>>>>>> =
        Arc::new(Mutex::new(vec![None; items.len()]));
    let sites = input.sites.clone();
    // Outputs recorded in the state, for sites configured from them (only what they need).
    let recorded: Arc<HashMap<String, Value>> = Arc::new(
        sites
            .values()
            .filter_map(|s| s.deferred.as_ref())
            .flat_map(|d| d.needs())
            .filter_map(|a| state.resources.get(&a).map(|r| (a, r.outputs.clone())))
            .collect(),
    );
    let waiting: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let provider_warnings: Arc<Mutex<Vec<String>>> = Arc::default();
    let settled: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let outcomes = walk::walk(&nodes, input.limits, |i| {
        let items = items.clone();
        let known = known.clone();
        let results = results.clone();
        let recorded = recorded.clone();
        let waiting = waiting.clone();
        let provider_warnings = provider_warnings.clone();
        let settled = settled.clone();
        let site = sites.get(&items[i].site).cloned();
        async move {
            let secrets = crate::diagnostics::secrets_at(items[i].desired.as_ref(), &items[i].sensitive);
            let result = match site {
                Some(site) => {
                    // Only outputs of resources that stay as they are: a site is not
                    // reached through something this plan still has to make or change.
                    let lookup = |address: &str, field: &str| -> Option<Value> {
                        let known = known.lock().unwrap_or_else(|e| e.into_inner());
                        match known.get(address) {
                            Some(_) if !settled.lock().unwrap_or_else(|e| e.into_inner()).contains(address) => None,
                            Some(outputs) => lookup_field(outputs, field).cloned(),
                            None => recorded.get(address).and_then(|o| lookup_field(o, field).cloned()),
                        }
                    };
                    match site.ready(&lookup).await {
                        Err(d) => Err(d),
                        Ok(Readiness::Waiting(needs)) => {
                            waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(items[i].site.clone(), needs);
                            plan_unread(&items[i], &known)
                        }
                        Ok(Readiness::Ready) => {
                            let planned = plan_one(&items[i], &site, &known, &provider_warnings)
                                .instrument(tracing::info_span!("plan", address = %items[i].address))
                                .await;
                            if let Ok(change) = &planned
                                && change.action == Action::NoOp
                            {
                                settled.lock().unwrap_or_else(|e| e.into_inner()).insert(change.address.clone());
                            }
                            planned
                        }
                    }
                    .map_err(|d| d.into_iter().map(|d| d.redact(&secrets)).collect())
                }
                None => Err(vec![
                    Diagnostic::error(format!(
                        "`{}` is on site `{}`, which the stack no longer declares",
                        items[i].address, items[i].site
                    ))
                    .hint("add the site back to destroy its resources, or remove them from the state with care"),
                ]),
            };
            let ok = result.is_ok();
            results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
            ok
        }
    })
    .await;

    let mut diags = Diagnostics::new();
    let mut changes = Vec::new();
    let mut unplanned = Vec::new();
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    for (i, outcome) in outcomes.iter().enumerate() {
        match (outcome, results[i].take()) {
            (_, Some(Ok(change))) => changes.push(change),
            // Unreachable (a host down): leave it out, go on with the rest.
            (_, Some(Err(d)))
                if d.iter().filter(|d| d.severity == crate::diagnostics::Severity::Error).all(|d| d.transient) =>
            {
                unplanned.push(Unplanned {
                    address: items[i].address.clone(),
                    site: items[i].site.clone(),
                    errors: d.into_iter().map(|d| d.summary).collect(),
                    because: None,
                });
            }
            (_, Some(Err(d))) => {
                // A provider names the field; the rendered template says where it came from.
                let resource = input.rendered.resources.get(&items[i].address);
                diags.extend(d.into_iter().map(|mut d| {
                    // `site.X`: about the site's config, not the resource.
                    if let Some(rest) = d.field.as_deref().and_then(|f| f.strip_prefix("spec.site.")) {
                        d.field = Some(format!("spec.sites.{}.config.{rest}", items[i].site));
                    }
                    if d.location.is_none()
                        && let (Some(resource), Some(field)) = (resource, &d.field)
                        && !field.starts_with("spec.sites.")
                    {
                        d.location = Some(resource.locate(&field_pointer(field)));
                    }
                    d
                }));
            }
            (Outcome::Skipped { because }, None) if because == "interrupted" => {
                diags.push(Diagnostic::error("planning was interrupted"));
                break;
            }
            (Outcome::Skipped { because }, None) => unplanned.push(Unplanned {
                address: items[i].address.clone(),
                site: items[i].site.clone(),
                errors: vec![],
                because: Some(because.clone()),
            }),
            _ => {}
        }
    }
    if diags.has_errors() {
        return Err(Diagnostics(crate::diagnostics::collapse(diags.0)));
    }
    for change in changes.iter_mut().filter(|c| c.action == Action::NoOp) {
        change.refresh_record = match state.resources.get(&change.address) {
            None => change.current.is_some(),
            Some(record) => {
                record.lifecycle != change.lifecycle
                    || change.current.as_ref().is_some_and(|c| c.private != record.private)
                    || record.depends_on != change.depends_on
                    || record.blueprint != change.blueprint
                    || record.sensitive != change.sensitive
            }
        };
    }
    let mut provider_warnings = std::mem::take(&mut *provider_warnings.lock().unwrap_or_else(|e| e.into_inner()));
    provider_warnings.sort();
    warnings.extend(provider_warnings);
    for (site, needs) in std::mem::take(&mut *waiting.lock().unwrap_or_else(|e| e.into_inner())) {
        warnings.push(format!(
            "site `{site}` is reached through outputs of {} that are known only after they are applied: its resources were planned without reading them, and are read again before they are changed",
            needs.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    changes.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(Plan {
        format: PLAN_FORMAT.into(),
        stack: input.stack.to_string(),
        operation: input.operation,
        state: StateRef {
            lineage: input.state.map(|s| s.lineage.clone()),
            serial: input.state.map(|s| s.serial).unwrap_or(0),
            path: std::path::absolute(&input.state_path).map(|p| p.display().to_string()).unwrap_or(input.state_path),
        },
        sites: input.connections.clone(),
        changes,
        warnings,
        unplanned,
    })
}

/// `spec.rules[0].port` → `/spec/rules/0/port`.
fn field_pointer(field: &str) -> String {
    let mut pointer = String::new();
    for part in field.replace('[', ".").replace(']', "").split('.').filter(|p| !p.is_empty()) {
        pointer.push('/');
        pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    pointer
}

/// Substitutes the references whose outputs are known.
pub fn resolve_known(spec: &mut Value, known: &HashMap<String, Value>) {
    unknown::resolve(spec, &|address, field| {
        let value = lookup_field(known.get(address)?, field)?;
        (!unknown::contains_unknown(value)).then(|| value.clone())
    });
}

/// `field` (dotted) of an outputs object.
pub fn lookup_field<'a>(outputs: &'a Value, field: &str) -> Option<&'a Value> {
    field.split('.').try_fold(outputs, |v, key| match v {
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => v.get(key),
    })
}

/// Copies the live values of `ignoreChanges` fields into the desired spec.
pub fn keep_ignored(desired: &mut Value, current: &Value, ignore: &[String]) {
    for field in ignore {
        let pointer = format!("/{}", field.replace('~', "~0").replace('/', "~1").replace('.', "/"));
        let live = current.pointer(&pointer).cloned();
        let Some(parent_pointer) = pointer.rsplit_once('/').map(|(p, _)| p.to_string()) else {
            continue;
        };
        let key = pointer.rsplit('/').next().unwrap_or_default().to_string();
        if let Some(Value::Object(parent)) =
            if parent_pointer.is_empty() { Some(&mut *desired) } else { desired.pointer_mut(&parent_pointer) }
        {
            match live {
                Some(v) => {
                    parent.insert(key, v);
                }
                None => {
                    parent.remove(&key);
                }
            }
        }
    }
}

async fn plan_one(
    item: &Item,
    site: &ConfiguredSite,
    known: &Mutex<HashMap<String, Value>>,
    warnings: &Mutex<Vec<String>>,
) -> Result<Change, Vec<Diagnostic>> {
    let provider = &site.provider;
    let address = &item.address;
    let provider_errors = |diagnostics: Vec<strata_provider_sdk::Diagnostic>| -> Result<Vec<String>, Vec<Diagnostic>> {
        let failed = strata_provider_sdk::has_errors(&diagnostics);
        let converted: Vec<Diagnostic> =
            diagnostics.into_iter().map(|d| Diagnostic::from_provider(d, address)).collect();
        if failed {
            Err(converted)
        } else {
            Ok(converted
                .into_iter()
                .map(|d| match d.hint {
                    Some(hint) => format!("{} (hint: {hint})", d.summary),
                    None => d.summary,
                })
                .collect())
        }
    };
    let mut desired = item.desired.clone();
    if let Some(spec) = &mut desired {
        let known = known.lock().unwrap_or_else(|e| e.into_inner());
        resolve_known(spec, &known);
    }
    let read = provider
        .read(ReadRequest {
            resource: item.resource(),
            spec: desired.clone().or_else(|| item.prior.as_ref().map(|p| p.spec.clone())).unwrap_or(Value::Null),
            prior: item.prior.clone(),
        })
        .await;
    let mut notes = provider_errors(read.diagnostics)?;
    let current = read.state;

    let Some(mut desired) = desired else {
        if item.lifecycle.prevent_destroy {
            return Err(vec![prevent_destroy_error(address, "delete")]);
        }
        // Delete what was recorded when it can no longer be read.
        let recorded = current.clone().or_else(|| item.prior.clone());
        return Ok(item.change(Action::Delete, vec![], current.as_ref(), None, Value::Null, recorded, Value::Null));
    };
    if let Some(current) = &current
        && !item.lifecycle.ignore_changes.is_empty()
    {
        keep_ignored(&mut desired, &current.spec, &item.lifecycle.ignore_changes);
    }
    let planned = provider
        .plan(PlanRequest { resource: item.resource(), desired: desired.clone(), current: current.clone() })
        .await;
    notes.extend(provider_errors(planned.diagnostics)?);
    if !notes.is_empty() {
        let mut w = warnings.lock().unwrap_or_else(|e| e.into_inner());
        w.extend(notes);
    }
    let (action, reasons) = match planned.action {
        PlannedAction::NoOp => (Action::NoOp, vec![]),
        PlannedAction::Create => (Action::Create, vec![]),
        PlannedAction::Update { .. } => (Action::Update, vec![]),
        PlannedAction::Replace { reasons } => (Action::Replace, reasons),
    };
    if action == Action::Replace && item.lifecycle.prevent_destroy {
        return Err(vec![prevent_destroy_error(address, "replace").detail(reasons.join("\n"))]);
    }
    let planned_outputs = if action == Action::NoOp {
        current.as_ref().map(|c| c.outputs.clone()).unwrap_or(planned.planned_outputs)
    } else {
        planned.planned_outputs
    };
    known.lock().unwrap_or_else(|e| e.into_inner()).insert(address.clone(), planned_outputs.clone());
    let before = current.clone();
    Ok(item.change(action, reasons, before.as_ref(), Some(desired), planned_outputs, current, planned.private))
}

/// Plans a resource of a site that cannot be reached yet (its connection comes from outputs
/// still unknown): create what was never made, update what was, delete what left the stack.
/// The apply reads it and plans it again once the site is configured.
fn plan_unread(item: &Item, known: &Mutex<HashMap<String, Value>>) -> Result<Change, Vec<Diagnostic>> {
    let prior = item.prior.clone();
    let Some(mut desired) = item.desired.clone() else {
        if item.lifecycle.prevent_destroy {
            return Err(vec![prevent_destroy_error(&item.address, "delete")]);
        }
        return Ok(item.change(Action::Delete, vec![], prior.as_ref(), None, Value::Null, prior.clone(), Value::Null));
    };
    resolve_known(&mut desired, &known.lock().unwrap_or_else(|e| e.into_inner()));
    let (action, outputs) = match &prior {
        None => (Action::Create, Value::Object(Default::default())),
        // What the site's new connection reaches is unknown: check it again at apply.
        Some(_) => (Action::Update, Value::Object(Default::default())),
    };
    known.lock().unwrap_or_else(|e| e.into_inner()).insert(item.address.clone(), outputs.clone());
    let mut change = item.change(action, vec![], prior.as_ref(), Some(desired), outputs, prior.clone(), Value::Null);
    change.unread = true;
    Ok(change)
}

fn prevent_destroy_error(address: &str, what: &str) -> Diagnostic {
    Diagnostic::error(format!("`{address}` has `lifecycle.preventDestroy` set, and this plan would {what} it"))
        .hint("if that is really meant, remove `preventDestroy` from its template first and apply that")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignored_fields_keep_their_live_value() {
        let mut desired = json!({"a": 1, "tags": {"x": "new"}, "gone": 1});
        keep_ignored(&mut desired, &json!({"a": 1, "tags": {"x": "old"}}), &["tags.x".into(), "gone".into()]);
        assert_eq!(desired, json!({"a": 1, "tags": {"x": "old"}}));
    }

    #[test]
    fn lookup_walks_dotted_fields() {
        let outputs = json!({"a": {"b": [10, 20]}});
        assert_eq!(lookup_field(&outputs, "a.b.1"), Some(&json!(20)));
        assert_eq!(lookup_field(&outputs, "a.c"), None);
    }
}
