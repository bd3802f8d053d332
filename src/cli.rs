//! The `strata` command line.
//!
//! Data goes to stdout (plans, reports, state, renders), everything else to stderr (progress,
//! diagnostics, logs). Exit codes: 0 success, 1 error, 2 changes present (with
//! `plan --detailed-exitcode`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::apply::Progress;
use crate::catalog::{BlueprintRef, Catalog};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::engine::{self, LockGuard};
use crate::output::{self, BarProgress, LineProgress, Style};
use crate::plan::{Operation, PLAN_FORMAT, Plan};
use crate::provider::Registry;
use crate::stack::Stack;
use crate::state::{self, LocalBackend};

/// strata: declarative infrastructure for multi-site AI platforms.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about = None)]
pub struct Cli {
    /// The stack file.
    #[arg(long, global = true, default_value = "stack.yaml", env = "STRATA_STACK")]
    pub stack: PathBuf,
    /// More logging on stderr (-v info, -vv debug, -vvv trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No colors (also when `NO_COLOR` is set).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of commands that walk the graph.
#[derive(Debug, Args)]
pub struct WalkOptions {
    /// Resources worked on at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallelism: u16,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the stack and its blueprints without touching any site.
    Validate,
    /// Print the resources the stack renders to.
    Render {
        /// As JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Show what apply would change.
    Plan {
        /// Print the plan as JSON (docs/plan-json.md).
        #[arg(long)]
        json: bool,
        /// Save the plan, to apply exactly it with `strata apply FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Exit 0 when nothing changes, 2 when something does, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan the destruction of everything the state holds.
        #[arg(long)]
        destroy: bool,
        /// Walk options.
        #[command(flatten)]
        walk: WalkOptions,
    },
    /// Make the sites match the stack (or carry out a saved plan).
    Apply {
        /// A plan saved with `strata plan --out FILE`.
        plan: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
        /// Walk options.
        #[command(flatten)]
        walk: WalkOptions,
    },
    /// Delete everything the state holds, in reverse dependency order.
    Destroy {
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
        /// Walk options.
        #[command(flatten)]
        walk: WalkOptions,
    },
    /// Show the current state: every resource with its outputs.
    Show {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the state.
    #[command(subcommand)]
    State(StateCommand),
    /// Print the dependency graph in Graphviz DOT.
    Graph,
    /// Inspect the blueprint catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// List the providers and their resource types.
    Providers,
    /// Take an existing object under management at an address the stack renders.
    Import {
        /// `site/component/type/name`, as `strata render` lists it.
        address: String,
        /// The provider's id of the object (for `local.file`: its path).
        id: String,
    },
    /// Remove a stale state lock.
    ForceUnlock {
        /// The lock id that the lock error printed.
        id: String,
    },
}

/// `strata state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List the addresses in the state.
    List,
    /// Show one resource of the state.
    Show {
        /// `site/component/type/name`.
        address: String,
    },
}

/// `strata catalog ...`.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List every blueprint and version.
    List,
    /// Show a blueprint: metadata, inputs, outputs, children.
    Show {
        /// `name` or `name@range`.
        name: String,
    },
}

/// Parses the command line, runs it, and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Exit code 2 means "changes present" (`plan --detailed-exitcode`): a usage
            // error is a plain error.
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    init_logging(cli.verbose);
    let color = !cli.no_color && Style::detect(std::io::stderr().is_terminal()).color;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, Registry::builtin())) {
        Ok(code) => code,
        Err(diags) => {
            eprint!("{}", diags.render(color));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The kubernetes and openstack clients log failed requests and retries; strata
    // reports what matters itself.
    let default = if verbose == 0 { "warn,kube_client=off,openstack_sdk=off".to_string() } else { default.to_string() };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

fn stdout_style(cli: &Cli) -> Style {
    let mut style = Style::detect(std::io::stdout().is_terminal());
    if cli.no_color {
        style.color = false;
    }
    style
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`strata plan | head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn print_json(value: &serde_json::Value) {
    print(&format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()));
}

/// Runs a parsed command line with the given providers.
pub async fn run(cli: Cli, registry: Registry) -> Result<ExitCode, Diagnostics> {
    let style = stdout_style(&cli);
    match &cli.command {
        Command::Validate => {
            let loaded = engine::load(&cli.stack, &registry)?;
            print(&format!(
                "{}: valid ({} sites, {} components, {} resources)\n",
                cli.stack.display(),
                loaded.stack.sites.len(),
                loaded.stack.components.len(),
                loaded.rendered.resources.len()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { json } => {
            let loaded = engine::load(&cli.stack, &registry)?;
            if *json {
                let mut value = serde_json::to_value(&loaded.rendered).unwrap_or_default();
                for (address, r) in &loaded.rendered.resources {
                    if let Some(spec) =
                        value.pointer_mut(&format!("/resources/{}/spec", address.replace('~', "~0").replace('/', "~1")))
                    {
                        *spec = output::display_value(&r.spec, "", &r.sensitive);
                    }
                }
                print_json(&value);
            } else {
                print(&output::render_yaml(&loaded.rendered));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { json, out, detailed_exitcode, destroy, walk } => {
            let loaded = engine::load(&cli.stack, &registry)?;
            let backend = engine::backend(&loaded.stack);
            let _lock = LockGuard::take(backend.clone(), "plan")?;
            let state = engine::read_state(backend.as_ref())?;
            let sites = engine::configure(&registry, &loaded.stack.name, &engine::connections(&loaded.stack))
                .await
                .map_err(|d| engine::locate_sites(&loaded.stack, d))?;
            let limits = interruptible(engine::limits(walk.parallelism.into(), &sites));
            let operation = if *destroy { Operation::Destroy } else { Operation::Apply };
            let plan = engine::plan(&loaded, state.as_ref(), &sites, operation, &limits).await?;
            if *json {
                print_json(&output::plan_json(&plan));
            } else {
                print(&output::plan_human(&plan, &style));
            }
            if let Some(path) = out {
                save_plan(&plan, path)?;
                if !*json {
                    print(&format!(
                        "\nSaved the plan to {}; apply exactly it with `strata apply {}`\n",
                        path.display(),
                        path.display()
                    ));
                }
            }
            Ok(if !plan.unplanned.is_empty() {
                ExitCode::FAILURE
            } else if *detailed_exitcode && plan.has_changes() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apply { plan: Some(path), walk, .. } => {
            let plan = load_plan(path)?;
            let backend: Arc<dyn state::Backend> = Arc::new(LocalBackend::new(&plan.state.path));
            let _lock = LockGuard::take(backend.clone(), "apply")?;
            let state = engine::read_state(backend.as_ref())?;
            engine::check_plan_is_current(&plan, state.as_ref())
                .map_err(|d| d.at(crate::diagnostics::Location::file(path.display().to_string())))?;
            execute(&plan, state, backend, &registry, walk, &style).await
        }
        Command::Apply { plan: None, auto_approve, walk } => {
            converge(&cli, &registry, Operation::Apply, *auto_approve, walk, &style).await
        }
        Command::Destroy { auto_approve, walk } => {
            converge(&cli, &registry, Operation::Destroy, *auto_approve, walk, &style).await
        }
        Command::Show { json } => {
            let (_, state) = state_of(&cli.stack)?;
            let Some(state) = state else {
                print("The state is empty: nothing has been applied yet.\n");
                return Ok(ExitCode::SUCCESS);
            };
            if *json {
                let mut value = serde_json::to_value(&state).unwrap_or_default();
                if let Some(resources) = value.get_mut("resources").and_then(|r| r.as_object_mut()) {
                    for (address, record) in resources.iter_mut() {
                        if let Some(r) = state.resources.get(address) {
                            record["spec"] = state::redact(&r.spec, &r.sensitive);
                        }
                    }
                }
                print_json(&value);
            } else {
                let mut text = format!("state {} (lineage {}, serial {})\n", state.stack, state.lineage, state.serial);
                for (address, r) in &state.resources {
                    text.push_str(&format!("\n{address}\n  id: {}\n  blueprint: {}\n", r.id, r.blueprint));
                    if let Some(map) = r.outputs.as_object() {
                        for (k, v) in map {
                            text.push_str(&format!("  {k} = {}\n", short(v)));
                        }
                    }
                }
                print(&text);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::List) => {
            let (_, state) = state_of(&cli.stack)?;
            let text: String = state.iter().flat_map(|s| s.resources.keys()).map(|a| format!("{a}\n")).collect();
            print(&text);
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Show { address }) => {
            let (_, state) = state_of(&cli.stack)?;
            let record = state.as_ref().and_then(|s| s.resources.get(address)).ok_or_else(|| {
                Diagnostic::error(format!("`{address}` is not in the state"))
                    .hint("`strata state list` shows every address")
            })?;
            let mut value = serde_json::to_value(record).unwrap_or_default();
            value["spec"] = state::redact(&record.spec, &record.sensitive);
            value["address"] = json!(address);
            print(&serde_yaml::to_string(&value).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph => {
            let loaded = engine::load(&cli.stack, &registry)?;
            print(&loaded.graph.to_dot());
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog(command) => {
            let stack = Stack::load(&cli.stack)?;
            let catalog =
                Catalog::load(&stack.catalog, stack.doc.value["spec"].get("catalog").is_some().then_some(&stack.doc))?;
            match command {
                CatalogCommand::List => print(&catalog_list(&catalog)),
                CatalogCommand::Show { name } => print(&catalog_show(&catalog, name)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Providers => {
            let mut text = String::new();
            for name in registry.names() {
                text.push_str(&format!("{name}\n"));
                if let Some(schema) = registry.provider_schema(name) {
                    for t in &schema.resource_types {
                        text.push_str(&format!(
                            "  {:<20} {} (outputs: {})\n",
                            t.name,
                            t.description,
                            t.outputs.join(", ")
                        ));
                    }
                }
            }
            print(&text);
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { address, id } => import(&cli, &registry, address, id).await,
        Command::ForceUnlock { id } => {
            let stack = Stack::load(&cli.stack)?;
            let backend = LocalBackend::new(stack.state.path.clone());
            let held = state::Locker::force_unlock(&backend, id).map_err(engine::state_error)?;
            print(&format!("Removed the lock held by {held}\n"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn import(cli: &Cli, registry: &Registry, address: &str, id: &str) -> Result<ExitCode, Diagnostics> {
    let loaded = engine::load(&cli.stack, registry)?;
    let resource = loaded.rendered.resources.get(address).ok_or_else(|| {
        Diagnostic::error(format!("the stack renders no resource at `{address}`"))
            .hint("add it to a blueprint first; `strata render` lists every address")
    })?;
    let backend = engine::backend(&loaded.stack);
    let _lock = LockGuard::take(backend.clone(), "import")?;
    let mut state = engine::read_state(backend.as_ref())?.unwrap_or_else(|| state::State::new(&loaded.stack.name));
    if let Some(record) = state.resources.get(address) {
        return Err(Diagnostic::error(format!("`{address}` is already managed (id `{}`)", record.id))
            .hint("`strata state show ADDRESS` shows it")
            .into());
    }
    let mut connections = engine::connections(&loaded.stack);
    connections.retain(|name, _| name == &resource.site);
    let sites = engine::configure(registry, &loaded.stack.name, &connections)
        .await
        .map_err(|d| engine::locate_sites(&loaded.stack, d))?;
    let site = &sites[&resource.site];
    // A site reached through outputs of other resources: those recorded in the state.
    let lookup = |target: &str, field: &str| -> Option<serde_json::Value> {
        crate::plan::lookup_field(&state.resources.get(target)?.outputs, field).cloned()
    };
    if let crate::provider::Readiness::Waiting(needs) = site.ready(&lookup).await.map_err(Diagnostics)? {
        return Err(Diagnostic::error(format!(
            "site `{}` is reached through outputs of {} that are not applied yet",
            resource.site,
            needs.join(", ")
        ))
        .hint("apply the stack first, then import")
        .into());
    }
    let response = site
        .provider
        .import(strata_provider_sdk::ImportRequest {
            resource: strata_provider_sdk::ResourceAddress {
                address: address.to_string(),
                resource_type: resource.resource_type.clone(),
                name: resource.name.clone(),
            },
            id: id.to_string(),
        })
        .await;
    let failed = strata_provider_sdk::has_errors(&response.diagnostics);
    let diags: Vec<Diagnostic> =
        response.diagnostics.into_iter().map(|d| Diagnostic::from_provider(d, address)).collect();
    let imported = match response.state {
        Some(imported) if !failed => imported,
        _ => return Err(Diagnostics(diags)),
    };
    let record = state::ResourceRecord {
        resource_type: resource.resource_type.clone(),
        site: resource.site.clone(),
        component: resource.component.clone(),
        name: resource.name.clone(),
        blueprint: resource.blueprint.clone(),
        id: imported.id.clone(),
        // What exists is what was "last applied": the next plan shows how it differs.
        spec: imported.spec,
        outputs: imported.outputs,
        private: imported.private,
        depends_on: loaded.graph.dependencies(address).into_iter().map(String::from).collect(),
        lifecycle: resource.lifecycle.clone(),
        sensitive: resource.sensitive.clone(),
    };
    state::StateChange::Put { address: address.to_string(), record: Box::new(record) }.apply_to(&mut state);
    backend.write(&state).map_err(engine::state_error)?;
    print(&format!("Imported {address} (id {}). `strata plan` shows how it differs from the stack.\n", imported.id));
    Ok(ExitCode::SUCCESS)
}

fn short(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if text.chars().count() > 100 { format!("{}...", text.chars().take(97).collect::<String>()) } else { text }
}

fn state_of(stack_path: &Path) -> Result<(Stack, Option<state::State>), Diagnostics> {
    let stack = Stack::load(stack_path)?;
    let backend = LocalBackend::new(stack.state.path.clone());
    let state = engine::read_state(&backend)?;
    Ok((stack, state))
}

/// Stops starting new work on Ctrl-C; what runs finishes and is recorded.
fn interruptible(limits: crate::walk::Limits) -> crate::walk::Limits {
    let flag = limits.interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: finishing what runs, starting nothing new (the state stays valid)");
            flag.store(true, Ordering::SeqCst);
        }
    });
    limits
}

async fn converge(
    cli: &Cli,
    registry: &Registry,
    operation: Operation,
    auto_approve: bool,
    walk: &WalkOptions,
    style: &Style,
) -> Result<ExitCode, Diagnostics> {
    let loaded = engine::load(&cli.stack, registry)?;
    let backend = engine::backend(&loaded.stack);
    let verb = if operation == Operation::Destroy { "destroy" } else { "apply" };
    let _lock = LockGuard::take(backend.clone(), verb)?;
    let state = engine::read_state(backend.as_ref())?;
    let sites = engine::configure(registry, &loaded.stack.name, &engine::connections(&loaded.stack))
        .await
        .map_err(|d| engine::locate_sites(&loaded.stack, d))?;
    let limits = interruptible(engine::limits(walk.parallelism.into(), &sites));
    let plan = engine::plan(&loaded, state.as_ref(), &sites, operation, &limits).await?;
    print(&output::plan_human(&plan, style));
    if !plan.has_changes() {
        if plan.record_refreshes() > 0 {
            // Only the state's records change: nothing to confirm on the sites.
            let (report, _) = engine::apply(&plan, state, backend, &sites, &limits, Arc::new(output::NoProgress)).await;
            if !report.success() {
                return finish(report, style);
            }
            print(&format!("Recorded {} resources in the state again.\n", plan.record_refreshes()));
        }
        return Ok(if plan.unplanned.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if !auto_approve && (!confirm(verb)? || limits.interrupted.load(Ordering::SeqCst)) {
        print("Nothing was changed.\n");
        return Ok(ExitCode::FAILURE);
    }
    let progress = progress_for(&plan);
    let (report, _) = engine::apply(&plan, state, backend, &sites, &limits, progress.clone()).await;
    finish(report, style)
}

async fn execute(
    plan: &Plan,
    state: Option<state::State>,
    backend: Arc<dyn state::Backend>,
    registry: &Registry,
    walk: &WalkOptions,
    style: &Style,
) -> Result<ExitCode, Diagnostics> {
    let sites = engine::configure(registry, &plan.stack, &plan.sites).await?;
    let limits = interruptible(engine::limits(walk.parallelism.into(), &sites));
    let progress = progress_for(plan);
    let (report, _) = engine::apply(plan, state, backend, &sites, &limits, progress).await;
    finish(report, style)
}

fn progress_for(plan: &Plan) -> Arc<dyn Progress> {
    let changes = plan.changes.iter().filter(|c| c.action != crate::plan::Action::NoOp).count();
    if std::io::stderr().is_terminal() {
        Arc::new(BarHandle(BarProgress::new(changes)))
    } else {
        Arc::new(LineProgress::new())
    }
}

/// Clears the bar when the apply is over.
struct BarHandle(BarProgress);

impl Progress for BarHandle {
    fn started(&self, address: &str, action: crate::plan::Action) {
        self.0.started(address, action);
    }
    fn finished(&self, report: &crate::apply::ResourceReport) {
        self.0.finished(report);
    }
}

impl Drop for BarHandle {
    fn drop(&mut self) {
        self.0.finish();
    }
}

fn finish(report: crate::apply::Report, style: &Style) -> Result<ExitCode, Diagnostics> {
    print(&output::report_human(&report, style));
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn confirm(verb: &str) -> Result<bool, Diagnostic> {
    if !std::io::stdin().is_terminal() {
        return Err(Diagnostic::error(format!("`strata {verb}` needs a confirmation, and stdin is not a terminal"))
            .hint("review the plan above and pass `--auto-approve`, or save it with `strata plan --out FILE` and run `strata apply FILE`"));
    }
    print(&format!("\nDo you want to {verb} these changes? Only `yes` is accepted.\n  Enter a value: "));
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Diagnostic::error("cannot read the answer").detail(e.to_string()))?;
    Ok(answer.trim() == "yes")
}

fn save_plan(plan: &Plan, path: &Path) -> Result<(), Diagnostic> {
    let bytes =
        serde_json::to_vec(plan).map_err(|e| Diagnostic::error("cannot serialize the plan").detail(e.to_string()))?;
    state::write_atomic(path, &bytes)
        .map_err(|e| Diagnostic::error(format!("cannot write the plan to `{}`", path.display())).detail(e.to_string()))
}

fn load_plan(path: &Path) -> Result<Plan, Diagnostic> {
    let bytes = std::fs::read(path).map_err(|e| {
        Diagnostic::error(format!("cannot read the plan `{}`", path.display()))
            .detail(e.to_string())
            .hint("save a plan with `strata plan --out FILE`")
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
        Diagnostic::error(format!("`{}` is not a saved strata plan", path.display()))
            .hint("save a plan with `strata plan --out FILE`")
    })?;
    if value.get("format").and_then(|f| f.as_str()) != Some(PLAN_FORMAT) {
        return Err(Diagnostic::error(format!(
            "`{}` is not a saved strata plan of format `{PLAN_FORMAT}`",
            path.display()
        ))
        .hint("plans are saved with `strata plan --out FILE` and applied by the same strata version"));
    }
    serde_json::from_value(value)
        .map_err(|e| Diagnostic::error(format!("the saved plan `{}` is damaged", path.display())).detail(e.to_string()))
}

fn catalog_list(catalog: &Catalog) -> String {
    if catalog.blueprints.is_empty() {
        return "The catalog is empty.\n".into();
    }
    let mut out = format!("{:<24} {:<10} {:<9} {}\n", "NAME", "VERSION", "CATEGORY", "DESCRIPTION");
    for b in &catalog.blueprints {
        out.push_str(&format!(
            "{:<24} {:<10} {:<9} {}\n",
            b.name,
            b.version.to_string(),
            b.category.as_deref().unwrap_or("-"),
            b.description
        ));
    }
    out
}

fn catalog_show(catalog: &Catalog, reference: &str) -> Result<String, Diagnostic> {
    let parsed = BlueprintRef::parse(reference).map_err(Diagnostic::error)?;
    let b = catalog
        .resolve(reference)
        .map_err(|e| Diagnostic::error(e).hint("`strata catalog list` shows every blueprint"))?;
    let versions: Vec<String> = catalog.versions(&parsed.name).iter().map(|v| v.version.to_string()).collect();
    let mut out = format!("{} {}\n", b.name, b.version);
    out.push_str(&format!("  description: {}\n", b.description));
    out.push_str(&format!("  category:    {}\n", b.category.as_deref().unwrap_or("-")));
    out.push_str(&format!("  folder:      {}\n", b.dir.display()));
    out.push_str(&format!("  versions:    {}\n", versions.join(", ")));
    if !b.upgrade_from.is_empty() {
        let ranges: Vec<String> = b.upgrade_from.iter().map(|r| r.to_string()).collect();
        out.push_str(&format!("  upgrades in place from: {}\n", ranges.join("; ")));
    }
    out.push_str("\ninputs:\n");
    let required: Vec<&str> = b
        .inputs
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if let Some(props) = b.inputs.get("properties").and_then(|p| p.as_object()) {
        for (name, schema) in props {
            let kind = schema.get("type").map(|t| t.to_string().replace('"', "")).unwrap_or_else(|| "any".into());
            let mut notes = Vec::new();
            if required.contains(&name.as_str()) {
                notes.push("required".to_string());
            }
            if let Some(d) = schema.get("default") {
                notes.push(format!("default {d}"));
            }
            if schema.get("writeOnly").and_then(|w| w.as_bool()) == Some(true) {
                notes.push("sensitive".into());
            }
            let description = schema.get("description").and_then(|d| d.as_str()).unwrap_or("");
            out.push_str(&format!("  {name:<20} {kind:<8} {:<30} {description}\n", notes.join(", ")));
        }
    }
    if !b.outputs.is_empty() {
        out.push_str("\noutputs:\n");
        for (name, expr) in &b.outputs {
            out.push_str(&format!("  {name:<20} {expr}\n"));
        }
    }
    if !b.uses.is_empty() {
        out.push_str("\nuses:\n");
        for u in &b.uses {
            out.push_str(&format!("  {:<20} {}\n", u.name, u.blueprint));
        }
    }
    out.push_str("\ntemplates:\n");
    for (name, _) in &b.templates {
        out.push_str(&format!("  {name}\n"));
    }
    Ok(out)
}
