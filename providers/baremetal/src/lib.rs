//! The `baremetal` provider: Linux hosts reached over SSH, directly or through bastions.
//!
//! Every resource names its `host` (a name from the site's `hosts`). Each host has one SSH
//! session, owned by its own thread and reused for every command; commands on one host run
//! one after the other, hosts run in parallel (up to the site's `concurrency`).
//!
//! Every value that reaches a remote shell is quoted (`shlex`), so values are data, never
//! code; only the scripts of `baremetal.command` (`run`, `undo`, `unless`) are run as
//! written, because running them is their purpose.
//!
//! Resource types: `baremetal.host` (facts; hostname, sysctls, kernel modules),
//! `baremetal.file`, `baremetal.directory`, `baremetal.package` (apt or dnf),
//! `baremetal.service` (systemd) and `baremetal.command`.
#![deny(missing_docs)]

pub mod connection;
mod resources;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use strata_provider_sdk::*;

use connection::{Connection, Endpoint, HostKeys, Timeouts};

/// The `baremetal` provider for one site.
#[derive(Default)]
pub struct BaremetalProvider {
    site: OnceLock<Site>,
}

const _: () = assert_provider::<BaremetalProvider>();

/// Makes a [`BaremetalProvider`]; a [`ProviderFactory`].
pub fn factory() -> Box<dyn Provider> {
    Box::new(BaremetalProvider::default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Jump {
    address: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    identity_file: Option<String>,
    #[serde(default)]
    bastion: Option<Box<Jump>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HostConfig {
    name: String,
    address: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    identity_file: Option<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SiteConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    identity_file: Option<String>,
    #[serde(default)]
    known_hosts: Option<String>,
    #[serde(default)]
    host_key_policy: Option<String>,
    #[serde(default)]
    bastion: Option<Box<Jump>>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    sudo: bool,
    #[serde(default)]
    ssh_config: Option<String>,
    #[serde(default)]
    connect_timeout: Option<u64>,
    #[serde(default)]
    command_timeout: Option<u64>,
    hosts: Vec<HostConfig>,
}

/// A configured site: its hosts and their connections.
struct Site {
    hosts: HashMap<String, Arc<Host>>,
    base_dir: PathBuf,
}

/// One host.
pub(crate) struct Host {
    pub(crate) name: String,
    connection: Connection,
    sudo: bool,
    user: String,
}

impl Host {
    /// Runs a POSIX shell script on the host (as root, through `sudo -n` for other users).
    pub(crate) async fn sh(&self, script: &str, stdin: Option<Vec<u8>>) -> Result<connection::Output, Diagnostic> {
        let wrapped = format!("sh -c {}", quote(script));
        let command = if self.sudo && self.user != "root" { format!("sudo -n -- {wrapped}") } else { wrapped };
        self.connection.exec(command, stdin).await.map_err(|e| {
            let d = Diagnostic::error(format!("host `{}`: {}", self.name, e.message()));
            match &e {
                connection::ExecError::HostKey(_) => d.with_hint(
                    "check the host's key out of band; if it really changed, remove its line from known_hosts (`ssh-keygen -R ADDRESS`)",
                ),
                connection::ExecError::Auth(_) => {
                    d.with_hint("check `user` and `identityFile` of the site (or the keys loaded in the ssh-agent)")
                }
                _ if e.is_transient() => d.transient(),
                _ => d,
            }
        })
    }
}

/// Quotes a value for a POSIX shell: the result is always one literal word.
pub fn quote(value: &str) -> String {
    // NUL cannot be passed through a shell at all; it is dropped rather than cut the word.
    let cleaned: String = value.chars().filter(|c| *c != '\0').collect();
    shlex::try_quote(&cleaned).map(|q| q.into_owned()).unwrap_or_else(|_| "''".into())
}

fn ssh_config_lookup(path: Option<&str>, address: &str) -> Option<ssh2_config::HostParams> {
    let path = match path {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".ssh/config"),
    };
    let file = std::fs::File::open(&path).ok()?;
    let mut reader = std::io::BufReader::new(file);
    let config =
        ssh2_config::SshConfig::default().parse(&mut reader, ssh2_config::ParseRule::ALLOW_UNKNOWN_FIELDS).ok()?;
    Some(config.query(address))
}

fn jump_endpoint(jump: &Jump, defaults: &SiteConfig, base: &std::path::Path) -> Endpoint {
    Endpoint {
        name: format!("bastion {}", jump.address),
        address: jump.address.clone(),
        port: jump.port.unwrap_or(22),
        user: jump.user.clone().or_else(|| defaults.user.clone()).unwrap_or_else(|| "root".into()),
        identity_file: jump
            .identity_file
            .as_deref()
            .or(defaults.identity_file.as_deref())
            .map(|p| connection::expand_home(p, base)),
        via: jump.bastion.as_ref().map(|b| Box::new(jump_endpoint(b, defaults, base))),
    }
}

impl BaremetalProvider {
    fn host(&self, spec: &Value) -> Result<Arc<Host>, Diagnostic> {
        let Some(site) = self.site.get() else {
            return Err(Diagnostic::error("the baremetal provider was not configured"));
        };
        let name = spec.get("host").and_then(Value::as_str).unwrap_or_default();
        site.hosts.get(name).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = site.hosts.keys().map(String::as_str).collect();
            known.sort_unstable();
            Diagnostic::error(format!("no host `{name}` in this site"))
                .with_field("host")
                .with_hint(format!("the site's hosts are: {}", known.join(", ")))
        })
    }

    fn base_dir(&self) -> PathBuf {
        self.site.get().map(|s| s.base_dir.clone()).unwrap_or_else(|| PathBuf::from("."))
    }
}

fn schema(name: &str, description: &str, spec: &str, outputs: &[&str]) -> ResourceTypeSchema {
    ResourceTypeSchema {
        name: name.into(),
        description: description.into(),
        spec: serde_json::from_str(spec).unwrap_or(Value::Bool(true)),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
    }
}

#[async_trait]
impl Provider for BaremetalProvider {
    fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: "baremetal".into(),
            config: serde_json::from_str(include_str!("../../../schemas/providers/baremetal.config.json"))
                .unwrap_or(Value::Bool(true)),
            resource_types: vec![
                schema(
                    "baremetal.host",
                    "A host: gathers facts (OS, CPUs, memory, disks, NICs, GPUs); sets hostname, sysctls, kernel modules",
                    include_str!("../../../schemas/resources/baremetal.host.json"),
                    &["id", "facts"],
                ),
                schema(
                    "baremetal.file",
                    "A file on a host, written through a temporary file and renamed",
                    include_str!("../../../schemas/resources/baremetal.file.json"),
                    &["id", "path", "sha256"],
                ),
                schema(
                    "baremetal.directory",
                    "A directory on a host",
                    include_str!("../../../schemas/resources/baremetal.directory.json"),
                    &["id", "path"],
                ),
                schema(
                    "baremetal.package",
                    "A package installed with apt or dnf (from the host's configured, possibly offline, repositories)",
                    include_str!("../../../schemas/resources/baremetal.package.json"),
                    &["id", "version"],
                ),
                schema(
                    "baremetal.service",
                    "A systemd service: unit file, enabled, running, restarted when its triggers change",
                    include_str!("../../../schemas/resources/baremetal.service.json"),
                    &["id"],
                ),
                schema(
                    "baremetal.command",
                    "A script run on a host on create (and `undo` on destroy), guarded by `creates`/`unless`",
                    include_str!("../../../schemas/resources/baremetal.command.json"),
                    &["id", "stdout"],
                ),
            ],
            data: Value::Null,
        }
    }

    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse {
        let config: SiteConfig = match serde_json::from_value(request.config.clone()) {
            Ok(c) => c,
            Err(e) => {
                return ConfigureResponse {
                    diagnostics: vec![Diagnostic::error(format!("invalid baremetal site config: {e}"))],
                    max_concurrency: None,
                };
            }
        };
        let base = request.base_dir.clone();
        let mut diagnostics = Vec::new();
        let policy = config.host_key_policy.as_deref().unwrap_or("strict");
        let accept_new = match policy {
            "strict" => false,
            "accept-new" => true,
            other => {
                diagnostics.push(
                    Diagnostic::error(format!("unknown hostKeyPolicy `{other}`"))
                        .with_field("hostKeyPolicy")
                        .with_hint("use `strict` (the default) or `accept-new`"),
                );
                false
            }
        };
        let keys = HostKeys {
            known_hosts: config
                .known_hosts
                .as_deref()
                .map(|p| connection::expand_home(p, &base))
                .unwrap_or_else(|| connection::expand_home("~/.ssh/known_hosts", &base)),
            accept_new,
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(config.connect_timeout.unwrap_or(10)),
            command: Duration::from_secs(config.command_timeout.unwrap_or(600)),
        };
        let bastion = config.bastion.as_ref().map(|b| Box::new(jump_endpoint(b, &config, &base)));
        let mut hosts = HashMap::new();
        for (i, h) in config.hosts.iter().enumerate() {
            if hosts.contains_key(&h.name) {
                diagnostics.push(
                    Diagnostic::error(format!("host `{}` is listed twice", h.name))
                        .with_field(format!("hosts.{i}.name")),
                );
                continue;
            }
            // `~/.ssh/config` fills in what the site leaves out, as OpenSSH would.
            let from_ssh_config = ssh_config_lookup(config.ssh_config.as_deref(), &h.address);
            let address =
                from_ssh_config.as_ref().and_then(|p| p.host_name.clone()).unwrap_or_else(|| h.address.clone());
            let port = h.port.or(from_ssh_config.as_ref().and_then(|p| p.port)).unwrap_or(22);
            let user = h
                .user
                .clone()
                .or_else(|| config.user.clone())
                .or_else(|| from_ssh_config.as_ref().and_then(|p| p.user.clone()))
                .unwrap_or_else(|| "root".into());
            let identity_file = h
                .identity_file
                .as_deref()
                .or(config.identity_file.as_deref())
                .map(|p| connection::expand_home(p, &base))
                .or_else(|| from_ssh_config.as_ref().and_then(|p| p.identity_file.as_ref()?.first().cloned()));
            let endpoint = Endpoint {
                name: h.name.clone(),
                address,
                port,
                user: user.clone(),
                identity_file,
                via: bastion.clone(),
            };
            let connection = Connection::start(endpoint, keys.clone(), timeouts);
            let _ = &h.labels;
            hosts.insert(h.name.clone(), Arc::new(Host { name: h.name.clone(), connection, sudo: config.sudo, user }));
        }
        let _ = self.site.set(Site { hosts, base_dir: base });
        ConfigureResponse { diagnostics, max_concurrency: Some(config.concurrency.unwrap_or(20)) }
    }

    async fn read(&self, request: ReadRequest) -> ReadResponse {
        let mut spec = if request.spec.is_null() {
            request.prior.as_ref().map(|p| p.spec.clone()).unwrap_or(Value::Null)
        } else {
            request.spec.clone()
        };
        // What exists is where it was made: a changed host, path or name is read at the old
        // place, so the plan replaces it (and removes the old one) instead of leaving it.
        if let (Some(prior), Value::Object(map)) = (&request.prior, &mut spec) {
            for field in ["host", "path", "name"] {
                if let Some(old) = prior.spec.get(field) {
                    map.insert(field.to_string(), old.clone());
                }
            }
        }
        let host = match self.host(&spec) {
            Ok(h) => h,
            Err(d) => return ReadResponse { diagnostics: vec![d], state: None },
        };
        match resources::read(&host, &request.resource, &spec, request.prior.as_ref(), &self.base_dir()).await {
            Ok(state) => ReadResponse { diagnostics: vec![], state },
            Err(d) => ReadResponse { diagnostics: vec![d], state: None },
        }
    }

    async fn plan(&self, request: PlanRequest) -> PlanResponse {
        if let Err(d) = self.host(&request.desired) {
            return PlanResponse::failed(vec![d]);
        }
        resources::plan(&request)
    }

    async fn apply(&self, request: ApplyRequest) -> ApplyResponse {
        let host = match self.host(&request.desired) {
            Ok(h) => h,
            Err(d) => return ApplyResponse { diagnostics: vec![d], state: None },
        };
        match resources::apply(&host, &request, &self.base_dir()).await {
            Ok(state) => ApplyResponse { diagnostics: vec![], state: Some(state) },
            Err(d) => ApplyResponse { diagnostics: vec![d], state: None },
        }
    }

    async fn delete(&self, request: DeleteRequest) -> DeleteResponse {
        let host = match self.host(&request.current.spec) {
            Ok(h) => h,
            Err(d) => return DeleteResponse { diagnostics: vec![d] },
        };
        match resources::delete(&host, &request).await {
            Ok(warnings) => DeleteResponse { diagnostics: warnings },
            Err(d) => DeleteResponse { diagnostics: vec![d] },
        }
    }

    async fn import(&self, request: ImportRequest) -> ImportResponse {
        // Ids are `host:path` (files, directories), `host:name` (packages, services).
        let Some((host, rest)) = request.id.split_once(':') else {
            return ImportResponse {
                diagnostics: vec![
                    Diagnostic::error(format!("`{}` is not a baremetal id", request.id))
                        .with_hint("write HOST:PATH for files and directories, HOST:NAME for packages and services"),
                ],
                state: None,
            };
        };
        let field = match request.resource.resource_type.as_str() {
            "baremetal.file" | "baremetal.directory" => "path",
            "baremetal.package" | "baremetal.service" => "name",
            other => {
                return ImportResponse {
                    diagnostics: vec![Diagnostic::error(format!("`{other}` cannot be imported"))],
                    state: None,
                };
            }
        };
        let spec = serde_json::json!({"host": host, field: rest});
        let read = self.read(ReadRequest { resource: request.resource.clone(), spec, prior: None }).await;
        match read.state {
            Some(state) => ImportResponse { diagnostics: read.diagnostics, state: Some(state) },
            None if read.diagnostics.is_empty() => ImportResponse {
                diagnostics: vec![Diagnostic::error(format!("nothing found at `{}`", request.id))],
                state: None,
            },
            None => ImportResponse { diagnostics: read.diagnostics, state: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_makes_hostile_values_literal() {
        for hostile in ["; rm -rf /", "$(reboot)", "`id`", "a'b", "new\nline", "\"x\"", "*", "-rf"] {
            let quoted = quote(hostile);
            let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {quoted}")).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), hostile, "{quoted}");
        }
    }
}
