//! The flow end to end: load → validate → render → graph, then plan and apply.
//! The CLI and the tests drive strata through these functions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::apply::{self, Progress, Report};
use crate::catalog::Catalog;
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::graph::Graph;
use crate::plan::{self, Operation, Plan, PlanInput};
use crate::provider::{self, ConfiguredSite, Registry, SiteConnection};
use crate::render::{self, Rendered};
use crate::stack::Stack;
use crate::state::{self, Backend, LocalBackend, Locker, State};
use crate::walk::Limits;

/// A stack, loaded and checked as far as it can be without touching any site.
pub struct Loaded {
    /// The stack.
    pub stack: Stack,
    /// Its catalog.
    pub catalog: Catalog,
    /// What it renders to.
    pub rendered: Rendered,
    /// The dependency graph.
    pub graph: Graph,
}

/// Loads, validates, renders and builds the graph; reports every problem found.
pub fn load(stack_path: &Path, registry: &Registry) -> Result<Loaded, Diagnostics> {
    let mut stack = Stack::parse(stack_path)?;
    let mut diags = Diagnostics::new();
    diags.extend(render::render_site_configs(&mut stack));
    diags.extend(stack.check());
    diags.extend(registry.validate_sites(&stack));
    let explicit_catalog = stack.doc.value["spec"].get("catalog").is_some().then_some(&stack.doc);
    let catalog = match Catalog::load(&stack.catalog, explicit_catalog) {
        Ok(c) => c,
        Err(d) => {
            diags.extend(d.0);
            return Err(diags);
        }
    };
    if diags.has_errors() {
        return Err(diags);
    }
    let rendered = render::render_stack(&stack, &catalog, registry)?;
    let graph = Graph::build(&stack, &rendered, registry)?;
    Ok(Loaded { stack, catalog, rendered, graph })
}

/// How to reach every site of a stack.
pub fn connections(stack: &Stack) -> IndexMap<String, SiteConnection> {
    let base_dir = std::path::absolute(&stack.dir).unwrap_or_else(|_| stack.dir.clone());
    stack
        .sites
        .iter()
        .map(|(name, site)| {
            (
                name.clone(),
                SiteConnection {
                    provider: site.provider.clone(),
                    config: site.config.clone(),
                    base_dir: base_dir.clone(),
                },
            )
        })
        .collect()
}

/// The stack's state backend.
pub fn backend(stack: &Stack) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(stack.state.path.clone()))
}

/// A state error as a diagnostic with the fix.
pub fn state_error(e: state::Error) -> Diagnostic {
    let detail = std::error::Error::source(&e).map(|s| s.to_string());
    let d = match &e {
        state::Error::Locked { holder } => {
            let mut d = Diagnostic::error(format!(
                "the state is locked by {}@{} (pid {}), running `{}` since {}",
                holder.who, holder.host, holder.pid, holder.operation, holder.since
            ))
            .detail(format!("lock id: {}\nstate: {}", holder.id, holder.path));
            d = if holder.holder_is_gone() {
                d.hint(format!("that process is no longer running on this machine; if no one else is using this state, run `strata force-unlock {}`", holder.id))
            } else {
                d.hint(format!("wait for it to finish; if it died, run `strata force-unlock {}`", holder.id))
            };
            return d;
        }
        state::Error::Corrupt { .. } => Diagnostic::error(e.to_string())
            .hint("restore it from a backup or version control; strata does not overwrite a state it cannot read"),
        state::Error::NewerFormat { .. } => Diagnostic::error(e.to_string()).hint("use the newer strata that wrote it"),
        state::Error::LockMismatch { held: Some(h), .. } => {
            Diagnostic::error(e.to_string()).hint(format!("the lock is held by {h}"))
        }
        _ => Diagnostic::error(e.to_string()),
    };
    match detail {
        Some(detail) => d.detail(detail),
        None => d,
    }
}

/// A lock that is released when dropped.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    id: String,
}

impl LockGuard {
    /// Takes the lock for `operation`.
    pub fn take(backend: Arc<dyn Backend>, operation: &str) -> Result<LockGuard, Diagnostic> {
        let id = backend.lock(operation).map_err(state_error)?;
        Ok(LockGuard { backend, id })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(e) = Locker::unlock(self.backend.as_ref(), &self.id) {
            tracing::warn!("could not release the state lock: {e}");
        }
    }
}

/// Reads the state; `None` when there is none yet.
pub fn read_state(backend: &dyn Backend) -> Result<Option<State>, Diagnostic> {
    backend.read().map_err(state_error)
}

/// Configures the providers of the given sites.
pub async fn configure(
    registry: &Registry,
    stack_name: &str,
    connections: &IndexMap<String, SiteConnection>,
) -> Result<HashMap<String, ConfiguredSite>, Diagnostics> {
    provider::configure_sites(registry, stack_name, connections).await
}

/// Locates diagnostics about a site's config (`spec.sites.NAME.config...`) in the stack file.
pub fn locate_sites(stack: &Stack, diags: Diagnostics) -> Diagnostics {
    Diagnostics(
        diags
            .0
            .into_iter()
            .map(|mut d| {
                if d.location.is_none()
                    && let Some(field) = d.field.as_deref().filter(|f| f.starts_with("spec.sites."))
                {
                    let pointer: String = field
                        .replace('[', ".")
                        .replace(']', "")
                        .split('.')
                        .filter(|p| !p.is_empty())
                        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
                        .collect();
                    d.location = Some(stack.doc.locate(&pointer));
                }
                d
            })
            .collect(),
    )
}

/// The walk limits: `parallelism` overall, each site's own limit where it has one.
pub fn limits(parallelism: usize, sites: &HashMap<String, ConfiguredSite>) -> Limits {
    let mut limits = Limits::new(parallelism);
    for (name, site) in sites {
        if let Some(limit) = site.max_concurrency {
            limits.per_site.insert(name.clone(), limit.max(1));
        }
    }
    limits
}

/// Refuses to change resources in place with a blueprint version that may not upgrade the
/// version that made them (`upgradeFrom`), and downgrades.
pub fn check_upgrades(loaded: &Loaded, state: &State) -> Vec<Diagnostic> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for instance in &loaded.rendered.instances {
        let Some(blueprint) = loaded.catalog.blueprints.iter().find(|b| b.id() == instance.blueprint) else { continue };
        for address in &instance.resources {
            let Some(record) = state.resources.get(address) else { continue };
            let Some((name, version)) = record.blueprint.split_once('@') else { continue };
            let Ok(version) = semver::Version::parse(version) else { continue };
            if name != blueprint.name || blueprint.may_upgrade_from(&version) {
                continue;
            }
            if !seen.insert((instance.site.clone(), instance.component.clone())) {
                continue;
            }
            let (what, hint) = if version > blueprint.version {
                (
                    "a downgrade",
                    "pin the version the resources were made with (`@=VERSION`) in the component's `blueprint`"
                        .to_string(),
                )
            } else {
                (
                    "not an upgrade this version allows in place",
                    match blueprint.upgrade_from.is_empty() {
                        true => format!(
                            "{} changes the major version; upgrade through a version whose `upgradeFrom` allows {version}",
                            blueprint.version
                        ),
                        false => format!(
                            "`upgradeFrom` of {} allows: {}; upgrade through an allowed version first",
                            blueprint.id(),
                            blueprint.upgrade_from.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ")
                        ),
                    },
                )
            };
            out.push(
                Diagnostic::error(format!(
                    "component `{}` on `{}`: {} → {} is {what}",
                    instance.component,
                    instance.site,
                    record.blueprint,
                    blueprint.id()
                ))
                .at(blueprint.doc.locate("/spec/upgradeFrom"))
                .hint(hint),
            );
        }
    }
    out
}

/// Plans the loaded stack against `state`.
pub async fn plan(
    loaded: &Loaded,
    state: Option<&State>,
    sites: &HashMap<String, ConfiguredSite>,
    operation: Operation,
    limits: &Limits,
) -> Result<Plan, Diagnostics> {
    if operation == Operation::Apply
        && let Some(state) = state
    {
        let problems = check_upgrades(loaded, state);
        if !problems.is_empty() {
            return Err(Diagnostics(problems));
        }
    }
    let connections = connections(&loaded.stack);
    let planned = plan::make_plan(PlanInput {
        stack: &loaded.stack.name,
        rendered: &loaded.rendered,
        graph: &loaded.graph,
        state,
        state_path: loaded.stack.state.path.display().to_string(),
        sites,
        connections: &connections,
        operation,
        limits,
    })
    .await;
    planned.map_err(|d| locate_sites(&loaded.stack, d))
}

/// Refuses a saved plan made against another state than `state`.
pub fn check_plan_is_current(plan: &Plan, state: Option<&State>) -> Result<(), Diagnostic> {
    let lineage = state.map(|s| s.lineage.clone());
    let serial = state.map(|s| s.serial).unwrap_or(0);
    if plan.state.lineage != lineage {
        return Err(Diagnostic::error("the saved plan was made for another state (its lineage differs)")
            .detail(format!(
                "plan: {}\nstate: {}",
                plan.state.lineage.as_deref().unwrap_or("(no state yet)"),
                lineage.as_deref().unwrap_or("(no state yet)")
            ))
            .hint("run `strata plan --out FILE` again against this state"));
    }
    if plan.state.serial != serial {
        return Err(Diagnostic::error(format!(
            "the state changed since the plan was made (serial {} then, {serial} now)",
            plan.state.serial
        ))
        .hint("someone applied in between; run `strata plan --out FILE` again and review it"));
    }
    Ok(())
}

/// Applies a plan; the state starts as `state` (or new) and is written after every change.
pub async fn apply(
    plan: &Plan,
    state: Option<State>,
    backend: Arc<dyn Backend>,
    sites: &HashMap<String, ConfiguredSite>,
    limits: &Limits,
    progress: Arc<dyn Progress>,
) -> (Report, State) {
    let state = state.unwrap_or_else(|| State::new(&plan.stack));
    apply::apply(plan, state, backend, sites, limits, progress).await
}
