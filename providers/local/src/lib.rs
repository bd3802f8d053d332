//! The `local` provider: files and commands on the machine strata runs on.
//!
//! - `local.file`: spec `path`, `content`, optional `mode` (octal string, `"0644"`); outputs
//!   `path` (absolute) and `sha256`. A file changed on disk is drift: the next plan shows an
//!   update. A changed `path` replaces the file. Writes go to a temporary file in the same
//!   folder, which is then renamed over the target.
//! - `local.command`: spec `create` and optional `destroy` argv lists, optional `env` and
//!   `triggers` maps; a change of any of them replaces it (destroy, then create). Output
//!   `stdout`. A command cannot be observed, so its state is what the last apply recorded.
//!
//! Relative paths resolve against the folder of the stack file; commands run there.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use strata_provider_sdk::*;

/// The `local` provider for one site.
#[derive(Default)]
pub struct LocalProvider {
    base_dir: OnceLock<PathBuf>,
}

const _: () = assert_provider::<LocalProvider>();

/// Makes a [`LocalProvider`]; a [`ProviderFactory`].
pub fn factory() -> Box<dyn Provider> {
    Box::new(LocalProvider::default())
}

const FILE: &str = "local.file";
const COMMAND: &str = "local.command";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn str_field<'a>(spec: &'a Value, field: &str) -> Option<&'a str> {
    spec.get(field).and_then(Value::as_str)
}

fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

impl LocalProvider {
    fn base_dir(&self) -> &Path {
        self.base_dir.get().map(PathBuf::as_path).unwrap_or(Path::new("."))
    }

    fn absolute(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() { path.to_path_buf() } else { self.base_dir().join(path) }
    }

    async fn read_file(&self, spec: &Value, prior: Option<&ResourceState>) -> ReadResponse {
        // Read where the file was last written (a changed path is planned as a replacement,
        // which needs the old file), else where the spec says.
        let Some(path) = prior.map(|p| p.id.clone()).or_else(|| str_field(spec, "path").map(String::from)) else {
            return ReadResponse::default();
        };
        let absolute = self.absolute(&path);
        let bytes = match tokio::fs::read(&absolute).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ReadResponse::default(),
            Err(e) => {
                return ReadResponse {
                    diagnostics: vec![
                        Diagnostic::error(format!("cannot read `{}`", absolute.display())).with_detail(e.to_string()),
                    ],
                    state: None,
                };
            }
        };
        let sha256 = sha256_hex(&bytes);
        let content = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => format!("(binary content, sha256 {sha256})"),
        };
        // The live spec keeps the path as the user wrote it, so that an unchanged path
        // does not show as a change.
        let shown_path = str_field(spec, "path")
            .filter(|p| self.absolute(p) == absolute)
            .or_else(|| prior.and_then(|p| str_field(&p.spec, "path")))
            .unwrap_or(&path)
            .to_string();
        let mut live = json!({"path": shown_path, "content": content});
        if spec.get("mode").is_some() || prior.is_some_and(|p| p.spec.get("mode").is_some()) {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = tokio::fs::metadata(&absolute).await {
                let mode = meta.permissions().mode() & 0o7777;
                // Written as wide as the spec writes it (`644` or `0644`).
                let width = str_field(spec, "mode").map(str::len).unwrap_or(4).max(3);
                live["mode"] = json!(format!("{mode:0width$o}"));
            }
        }
        ReadResponse {
            diagnostics: vec![],
            state: Some(ResourceState {
                id: absolute.to_string_lossy().into_owned(),
                spec: live,
                outputs: json!({"path": absolute.to_string_lossy(), "sha256": sha256}),
                private: Value::Null,
            }),
        }
    }

    fn plan_file(&self, request: &PlanRequest) -> PlanResponse {
        let desired = &request.desired;
        let mut diagnostics = vec![];
        if let Some(mode) = str_field(desired, "mode")
            && !unknown::is_unknown_str(mode)
            && parse_mode(mode).is_none()
        {
            diagnostics.push(
                Diagnostic::error(format!("`{mode}` is not an octal file mode"))
                    .with_field("mode")
                    .with_hint("write it as a quoted octal string, e.g. \"0644\""),
            );
        }
        let path = str_field(desired, "path").unwrap_or_default();
        let content = str_field(desired, "content").unwrap_or_default();
        let planned_outputs = json!({
            "path": if unknown::is_unknown_str(path) { unknown::opaque(&request.resource.address, "path") }
                    else { json!(self.absolute(path).to_string_lossy()) },
            "sha256": if unknown::is_unknown_str(content) { unknown::opaque(&request.resource.address, "sha256") }
                      else { json!(sha256_hex(content.as_bytes())) },
        });
        let action = match &request.current {
            None => PlannedAction::Create,
            Some(_) if unknown::is_unknown_str(path) => {
                PlannedAction::Replace { reasons: vec!["`path` is known only after apply, and may change".into()] }
            }
            Some(current)
                if str_field(&current.spec, "path").map(|p| self.absolute(p)) != Some(self.absolute(path)) =>
            {
                PlannedAction::Replace { reasons: vec!["`path` cannot change in place".into()] }
            }
            Some(current) if &current.spec == desired => PlannedAction::NoOp,
            Some(current) => PlannedAction::Update { patch: diff(&current.spec, desired) },
        };
        PlanResponse { diagnostics, action, planned_outputs, private: Value::Null }
    }

    async fn write_file(&self, desired: &Value) -> ApplyResponse {
        let fail = |summary: String, e: std::io::Error| ApplyResponse {
            diagnostics: vec![Diagnostic::error(summary).with_detail(e.to_string())],
            state: None,
        };
        let path = str_field(desired, "path").unwrap_or_default();
        let content = str_field(desired, "content").unwrap_or_default();
        let absolute = self.absolute(path);
        let Some(parent) = absolute.parent() else {
            return ApplyResponse {
                diagnostics: vec![Diagnostic::error(format!("`{path}` is not a file path")).with_field("path")],
                state: None,
            };
        };
        if let Err(e) = tokio::fs::create_dir_all(parent).await {
            return fail(format!("cannot create folder `{}`", parent.display()), e);
        }
        let name = absolute.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = parent.join(format!(".{name}.strata-tmp-{}", std::process::id()));
        // The content is never readable by more than the final mode allows: the desired
        // mode, else the mode the file has now, else 0644.
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            match str_field(desired, "mode").and_then(parse_mode) {
                Some(m) => m,
                None => tokio::fs::metadata(&absolute).await.map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644),
            }
        };
        let written = async {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::fs::remove_file(&temp).await;
            let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).await?;
            file.write_all(content.as_bytes()).await?;
            file.sync_all().await?;
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).await
        };
        if let Err(e) = written.await {
            let _ = tokio::fs::remove_file(&temp).await;
            return fail(format!("cannot write `{}`", temp.display()), e);
        }
        if let Err(e) = tokio::fs::rename(&temp, &absolute).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return fail(format!("cannot write `{}`", absolute.display()), e);
        }
        ApplyResponse {
            diagnostics: vec![],
            state: Some(ResourceState {
                id: absolute.to_string_lossy().into_owned(),
                spec: desired.clone(),
                outputs: json!({"path": absolute.to_string_lossy(), "sha256": sha256_hex(content.as_bytes())}),
                private: Value::Null,
            }),
        }
    }

    fn plan_command(&self, request: &PlanRequest) -> PlanResponse {
        let address = &request.resource.address;
        let action = match &request.current {
            None => PlannedAction::Create,
            Some(current) => {
                let reasons: Vec<String> = ["create", "destroy", "env", "triggers"]
                    .iter()
                    .filter(|f| current.spec.get(**f) != request.desired.get(**f))
                    .map(|f| format!("`{f}` changed: a command is run again, not updated"))
                    .collect();
                if reasons.is_empty() { PlannedAction::NoOp } else { PlannedAction::Replace { reasons } }
            }
        };
        let planned_outputs = match (&action, &request.current) {
            (PlannedAction::NoOp, Some(current)) => current.outputs.clone(),
            _ => json!({"stdout": unknown::opaque(address, "stdout")}),
        };
        PlanResponse { diagnostics: vec![], action, planned_outputs, private: Value::Null }
    }

    async fn run(&self, argv: &Value, env: Option<&Value>, what: &str) -> Result<String, Diagnostic> {
        let argv: Vec<&str> = argv.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let Some((program, args)) = argv.split_first() else {
            return Err(Diagnostic::error(format!("`{what}` is empty")).with_field(what));
        };
        let mut command = tokio::process::Command::new(program);
        command.args(args).current_dir(self.base_dir()).stdin(std::process::Stdio::null());
        if let Some(Value::Object(env)) = env {
            for (key, value) in env {
                let value = value.as_str().map(String::from).unwrap_or_else(|| value.to_string());
                command.env(key, value);
            }
        }
        let output = command.output().await.map_err(|e| {
            Diagnostic::error(format!("cannot run `{program}`"))
                .with_field(what)
                .with_detail(e.to_string())
                .with_hint("check that the program exists and is on PATH")
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            // Only the program is named: arguments may hold sensitive values.
            return Err(Diagnostic::error(format!("`{what}` command `{program}` failed ({})", output.status))
                .with_field(what)
                .with_detail(tail.join("\n")));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn run_stamp() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos:x}-{}", std::process::id())
}

fn wrong_type(resource_type: &str) -> Diagnostic {
    Diagnostic::error(format!("the `local` provider has no resource type `{resource_type}`"))
        .with_hint("`local` manages `local.file` and `local.command`")
}

#[async_trait]
impl Provider for LocalProvider {
    fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: "local".into(),
            config: serde_json::from_str(include_str!("../../../schemas/providers/local.config.json"))
                .unwrap_or(Value::Bool(true)),
            resource_types: vec![
                ResourceTypeSchema {
                    name: FILE.into(),
                    description: "A file on this machine".into(),
                    spec: serde_json::from_str(include_str!("../../../schemas/resources/local.file.json"))
                        .unwrap_or(Value::Bool(true)),
                    outputs: vec!["path".into(), "sha256".into()],
                },
                ResourceTypeSchema {
                    name: COMMAND.into(),
                    description: "A command run on this machine on create and destroy".into(),
                    spec: serde_json::from_str(include_str!("../../../schemas/resources/local.command.json"))
                        .unwrap_or(Value::Bool(true)),
                    outputs: vec!["stdout".into()],
                },
            ],
            data: Value::Null,
        }
    }

    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse {
        let _ = self.base_dir.set(request.base_dir);
        ConfigureResponse::default()
    }

    async fn read(&self, request: ReadRequest) -> ReadResponse {
        match request.resource.resource_type.as_str() {
            FILE => self.read_file(&request.spec, request.prior.as_ref()).await,
            // A command's effect cannot be observed: what was recorded is what there is.
            COMMAND => ReadResponse { diagnostics: vec![], state: request.prior },
            other => ReadResponse { diagnostics: vec![wrong_type(other)], state: None },
        }
    }

    async fn plan(&self, request: PlanRequest) -> PlanResponse {
        match request.resource.resource_type.as_str() {
            FILE => self.plan_file(&request),
            COMMAND => self.plan_command(&request),
            other => PlanResponse::failed(vec![wrong_type(other)]),
        }
    }

    async fn apply(&self, request: ApplyRequest) -> ApplyResponse {
        match request.resource.resource_type.as_str() {
            FILE => self.write_file(&request.desired).await,
            COMMAND => {
                let desired = &request.desired;
                match self.run(&desired["create"], desired.get("env"), "create").await {
                    Ok(stdout) => ApplyResponse {
                        diagnostics: vec![],
                        state: Some(ResourceState {
                            // One id per run, so a replacement's old run is told apart.
                            id: format!("{}@{}", request.resource.address, run_stamp()),
                            spec: desired.clone(),
                            outputs: json!({"stdout": stdout}),
                            private: Value::Null,
                        }),
                    },
                    Err(diagnostic) => ApplyResponse { diagnostics: vec![diagnostic], state: None },
                }
            }
            other => ApplyResponse { diagnostics: vec![wrong_type(other)], state: None },
        }
    }

    async fn delete(&self, request: DeleteRequest) -> DeleteResponse {
        let current = &request.current;
        match request.resource.resource_type.as_str() {
            FILE => match tokio::fs::remove_file(self.absolute(&current.id)).await {
                Ok(()) => DeleteResponse::default(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => DeleteResponse::default(),
                Err(e) => DeleteResponse {
                    diagnostics: vec![
                        Diagnostic::error(format!("cannot delete `{}`", current.id)).with_detail(e.to_string()),
                    ],
                },
            },
            COMMAND => match current.spec.get("destroy") {
                Some(destroy) => match self.run(destroy, current.spec.get("env"), "destroy").await {
                    Ok(_) => DeleteResponse::default(),
                    Err(diagnostic) => DeleteResponse { diagnostics: vec![diagnostic] },
                },
                None => DeleteResponse::default(),
            },
            other => DeleteResponse { diagnostics: vec![wrong_type(other)] },
        }
    }

    async fn import(&self, request: ImportRequest) -> ImportResponse {
        match request.resource.resource_type.as_str() {
            FILE => {
                let read = self.read_file(&json!({"path": request.id}), None).await;
                match read.state {
                    Some(state) => ImportResponse { diagnostics: read.diagnostics, state: Some(state) },
                    None if read.diagnostics.is_empty() => ImportResponse {
                        diagnostics: vec![Diagnostic::error(format!("no file at `{}`", request.id))],
                        state: None,
                    },
                    None => ImportResponse { diagnostics: read.diagnostics, state: None },
                }
            }
            COMMAND => ImportResponse {
                diagnostics: vec![Diagnostic::error(
                    "a `local.command` cannot be imported: it has no live state to read",
                )],
                state: None,
            },
            other => ImportResponse { diagnostics: vec![wrong_type(other)], state: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn configured(dir: &Path) -> LocalProvider {
        let provider = LocalProvider::default();
        provider
            .configure(ConfigureRequest {
                site: "lab".into(),
                stack: "test".into(),
                config: json!({}),
                base_dir: dir.to_path_buf(),
            })
            .await;
        provider
    }

    fn address(resource_type: &str, name: &str) -> ResourceAddress {
        ResourceAddress {
            address: format!("lab/c/{resource_type}/{name}"),
            resource_type: resource_type.into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn file_is_created_then_unchanged_then_drift_is_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let provider = configured(dir.path()).await;
        let resource = address(FILE, "motd");
        let desired = json!({"path": "out/motd", "content": "hello\n", "mode": "0600"});

        let read = provider.read(ReadRequest { resource: resource.clone(), spec: desired.clone(), prior: None }).await;
        assert!(read.state.is_none());
        let plan =
            provider.plan(PlanRequest { resource: resource.clone(), desired: desired.clone(), current: None }).await;
        assert_eq!(plan.action, PlannedAction::Create);
        let applied = provider
            .apply(ApplyRequest {
                resource: resource.clone(),
                desired: desired.clone(),
                current: None,
                private: Value::Null,
            })
            .await;
        let state = applied.state.expect("created");
        assert_eq!(std::fs::read_to_string(dir.path().join("out/motd")).unwrap(), "hello\n");
        assert_eq!(state.outputs["sha256"], json!(sha256_hex(b"hello\n")));

        let read = provider
            .read(ReadRequest { resource: resource.clone(), spec: desired.clone(), prior: Some(state.clone()) })
            .await;
        let plan = provider
            .plan(PlanRequest { resource: resource.clone(), desired: desired.clone(), current: read.state })
            .await;
        assert_eq!(plan.action, PlannedAction::NoOp);

        std::fs::write(dir.path().join("out/motd"), "edited\n").unwrap();
        let read =
            provider.read(ReadRequest { resource: resource.clone(), spec: desired.clone(), prior: Some(state) }).await;
        let plan = provider.plan(PlanRequest { resource, desired, current: read.state }).await;
        assert!(matches!(plan.action, PlannedAction::Update { .. }), "{:?}", plan.action);
    }

    #[tokio::test]
    async fn command_change_replaces_and_failure_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let provider = configured(dir.path()).await;
        let resource = address(COMMAND, "hello");
        let desired = json!({"create": ["sh", "-c", "echo hi"]});
        let applied = provider
            .apply(ApplyRequest {
                resource: resource.clone(),
                desired: desired.clone(),
                current: None,
                private: Value::Null,
            })
            .await;
        let state = applied.state.expect("ran");
        assert_eq!(state.outputs["stdout"], json!("hi\n"));
        let changed = json!({"create": ["sh", "-c", "echo bye"]});
        let plan =
            provider.plan(PlanRequest { resource: resource.clone(), desired: changed, current: Some(state) }).await;
        assert!(matches!(plan.action, PlannedAction::Replace { .. }));

        let failing = json!({"create": ["sh", "-c", "echo oops >&2; exit 3"]});
        let applied =
            provider.apply(ApplyRequest { resource, desired: failing, current: None, private: Value::Null }).await;
        assert!(applied.state.is_none());
        assert!(applied.diagnostics[0].summary.contains("failed"));
        assert_eq!(applied.diagnostics[0].detail.as_deref(), Some("oops"));
    }
}
