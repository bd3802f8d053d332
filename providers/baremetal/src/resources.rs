//! The resource types, each as shell scripts over the host's connection. Every value in a
//! script goes through [`quote`].

use std::path::Path;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use strata_provider_sdk::{
    ApplyRequest, DeleteRequest, Diagnostic, PlanRequest, PlanResponse, PlannedAction, ResourceAddress, ResourceState,
    diff, unknown,
};

use crate::{Host, quote};

/// Files up to this size are read back whole (to show a diff); larger ones by checksum.
const SHOWN_FILE_SIZE: u64 = 64 * 1024;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn text<'a>(spec: &'a Value, field: &str) -> Option<&'a str> {
    spec.get(field).and_then(Value::as_str)
}

fn host_name(spec: &Value) -> &str {
    text(spec, "host").unwrap_or_default()
}

/// Keeps the live fields the desired spec speaks about (plus `host`), so that fields the
/// user left out never show as changes.
fn only_desired(live: Map<String, Value>, desired: &Value) -> Value {
    let mut out = Map::new();
    for (k, v) in live {
        if k == "host" || desired.get(&k).is_some() {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

fn failed(host: &Host, what: &str, output: &crate::connection::Output) -> Diagnostic {
    let stderr = output.stderr();
    let stdout = output.stdout();
    let detail = if stderr.is_empty() { stdout.trim().to_string() } else { stderr };
    Diagnostic::error(format!("host `{}`: {what} failed (exit {})", host.name, output.code))
        .with_detail(tail(&detail, 30))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn run(host: &Host, what: &str, script: &str, stdin: Option<Vec<u8>>) -> Result<String, Diagnostic> {
    let output = host.sh(script, stdin).await?;
    if output.code != 0 {
        return Err(failed(host, what, &output));
    }
    Ok(output.stdout())
}

fn state(id: String, spec: Value, outputs: Value) -> ResourceState {
    ResourceState { id, spec, outputs, private: Value::Null }
}

/// The live state of a resource, `None` when it does not exist.
pub(crate) async fn read(
    host: &Host,
    resource: &ResourceAddress,
    spec: &Value,
    prior: Option<&ResourceState>,
    base: &Path,
) -> Result<Option<ResourceState>, Diagnostic> {
    match resource.resource_type.as_str() {
        "baremetal.file" => read_file(host, spec, base).await,
        "baremetal.directory" => read_directory(host, spec).await,
        "baremetal.package" => read_package(host, spec).await,
        "baremetal.service" => read_service(host, spec, prior).await,
        "baremetal.command" => read_command(host, prior).await,
        "baremetal.host" => read_host(host, spec).await.map(Some),
        other => Err(Diagnostic::error(format!("the baremetal provider has no resource type `{other}`"))),
    }
}

/// The content a file spec asks for: `content`, or the bytes of the local `source`.
fn wanted_content(spec: &Value, base: &Path) -> Result<Vec<u8>, Diagnostic> {
    if let Some(content) = text(spec, "content") {
        return Ok(content.as_bytes().to_vec());
    }
    match text(spec, "source") {
        Some(source) => {
            let path = crate::connection::expand_home(source, base);
            std::fs::read(&path).map_err(|e| {
                Diagnostic::error(format!("cannot read the artifact `{}`", path.display()))
                    .with_field("source")
                    .with_detail(e.to_string())
            })
        }
        None => Ok(Vec::new()),
    }
}

async fn read_file(host: &Host, spec: &Value, base: &Path) -> Result<Option<ResourceState>, Diagnostic> {
    let path = text(spec, "path").unwrap_or_default();
    let script = format!(
        "p={path}\nif [ -f \"$p\" ]; then\n  echo present\n  stat -c '%a %U %G %s' -- \"$p\"\n  sha256sum -- \"$p\" | cut -d' ' -f1\n  if [ \"$(stat -c %s -- \"$p\")\" -le {SHOWN_FILE_SIZE} ]; then cat -- \"$p\"; fi\nelif [ -e \"$p\" ]; then\n  echo other\nelse\n  echo absent\nfi",
        path = quote(path)
    );
    let output = host.sh(&script, None).await?;
    if output.code != 0 {
        return Err(failed(host, "reading a file", &output));
    }
    let mut parts = output.stdout.splitn(4, |b| *b == b'\n');
    let status = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    match status.as_str() {
        "absent" => return Ok(None),
        "other" => {
            return Err(Diagnostic::error(format!("host `{}`: `{path}` exists and is not a regular file", host.name))
                .with_field("path")
                .with_hint("remove it by hand, or choose another path"));
        }
        _ => {}
    }
    let stat = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let sha = String::from_utf8_lossy(parts.next().unwrap_or_default()).trim().to_string();
    let body = parts.next().unwrap_or_default();
    let mut fields = stat.split_whitespace();
    let mode = fields.next().map(|m| format!("{:0>4}", m)).unwrap_or_default();
    let owner = fields.next().unwrap_or_default().to_string();
    let group = fields.next().unwrap_or_default().to_string();
    let size: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let wanted = wanted_content(spec, base).unwrap_or_default();
    // The same bytes show as the desired text; other bytes as they are, when small text.
    let content = if sha256_hex(&wanted) == sha {
        match (text(spec, "content"), text(spec, "source")) {
            (Some(c), _) => json!(c),
            (None, Some(_)) => json!(format!("(sha256 {sha})")),
            (None, None) => json!(""),
        }
    } else if size <= SHOWN_FILE_SIZE && std::str::from_utf8(body).is_ok() {
        json!(String::from_utf8_lossy(body))
    } else {
        json!(format!("({size} bytes, sha256 {sha})"))
    };
    let mut live = Map::new();
    live.insert("host".into(), json!(host_name(spec)));
    live.insert("path".into(), json!(path));
    if spec.get("source").is_some() {
        live.insert("source".into(), if sha256_hex(&wanted) == sha { spec["source"].clone() } else { content.clone() });
    } else {
        live.insert("content".into(), content);
    }
    live.insert("mode".into(), json!(mode));
    live.insert("owner".into(), json!(owner));
    live.insert("group".into(), json!(group));
    Ok(Some(state(
        format!("{}:{path}", host.name),
        only_desired(live, spec),
        json!({"id": format!("{}:{path}", host.name), "path": path, "sha256": sha}),
    )))
}

async fn read_directory(host: &Host, spec: &Value) -> Result<Option<ResourceState>, Diagnostic> {
    let path = text(spec, "path").unwrap_or_default();
    let script = format!(
        "p={}\nif [ -d \"$p\" ]; then echo present; stat -c '%a %U %G' -- \"$p\"; elif [ -e \"$p\" ]; then echo other; else echo absent; fi",
        quote(path)
    );
    let out = run(host, "reading a directory", &script, None).await?;
    let mut lines = out.lines();
    match lines.next() {
        Some("present") => {}
        Some("other") => {
            return Err(Diagnostic::error(format!("host `{}`: `{path}` exists and is not a directory", host.name))
                .with_field("path"));
        }
        _ => return Ok(None),
    }
    let mut fields = lines.next().unwrap_or_default().split_whitespace();
    let mut live = Map::new();
    live.insert("host".into(), json!(host_name(spec)));
    live.insert("path".into(), json!(path));
    live.insert("mode".into(), json!(fields.next().map(|m| format!("{:0>4}", m)).unwrap_or_default()));
    live.insert("owner".into(), json!(fields.next().unwrap_or_default()));
    live.insert("group".into(), json!(fields.next().unwrap_or_default()));
    let id = format!("{}:{path}", host.name);
    Ok(Some(state(id.clone(), only_desired(live, spec), json!({"id": id, "path": path}))))
}

fn package_manager(spec: &Value) -> &str {
    text(spec, "manager").unwrap_or("auto")
}

async fn read_package(host: &Host, spec: &Value) -> Result<Option<ResourceState>, Diagnostic> {
    let name = text(spec, "name").unwrap_or_default();
    let script = format!(
        "n={name}\nif command -v dpkg-query >/dev/null 2>&1; then echo apt; dpkg-query -W -f='${{db:Status-Status}} ${{Version}}\\n' \"$n\" 2>/dev/null || true\nelif command -v rpm >/dev/null 2>&1; then echo dnf; rpm -q --qf 'installed %{{VERSION}}-%{{RELEASE}}\\n' \"$n\" 2>/dev/null || true\nelse echo none; fi",
        name = quote(name)
    );
    let out = run(host, "querying a package", &script, None).await?;
    let mut lines = out.lines();
    let manager = lines.next().unwrap_or("none");
    if manager == "none" {
        return Err(Diagnostic::error(format!("host `{}` has neither apt nor dnf", host.name)));
    }
    let Some(version) = lines.next().and_then(|l| l.strip_prefix("installed ")).map(str::trim) else {
        return Ok(None);
    };
    let mut live = Map::new();
    live.insert("host".into(), json!(host_name(spec)));
    live.insert("name".into(), json!(name));
    live.insert("version".into(), json!(version));
    live.insert("manager".into(), json!(package_manager(spec)));
    let id = format!("{}:{name}", host.name);
    Ok(Some(state(id.clone(), only_desired(live, spec), json!({"id": id, "version": version, "manager": manager}))))
}

fn unit_path(name: &str) -> String {
    format!("/etc/systemd/system/{name}.service")
}

async fn read_service(
    host: &Host,
    spec: &Value,
    prior: Option<&ResourceState>,
) -> Result<Option<ResourceState>, Diagnostic> {
    let name = text(spec, "name").unwrap_or_default();
    let script = format!(
        "n={name}\nf={unit}\nprintf 'load=%s\\n' \"$(systemctl show -p LoadState --value -- \"$n\" 2>/dev/null)\"\nprintf 'enabled=%s\\n' \"$(systemctl is-enabled -- \"$n\" 2>/dev/null)\"\nprintf 'active=%s\\n' \"$(systemctl is-active -- \"$n\" 2>/dev/null)\"\nif [ -f \"$f\" ]; then echo unit; cat -- \"$f\"; fi",
        name = quote(name),
        unit = quote(&unit_path(name))
    );
    let out = run(host, "querying a service", &script, None).await?;
    let (head, unit) = match out.split_once("\nunit\n") {
        Some((head, unit)) => (head.to_string(), Some(unit.to_string())),
        None => (out.trim_end().to_string(), None),
    };
    let value = |key: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or("").to_string();
    let load = value("load");
    if unit.is_none() && (load.is_empty() || load == "not-found") {
        return Ok(None);
    }
    let mut live = Map::new();
    live.insert("host".into(), json!(host_name(spec)));
    live.insert("name".into(), json!(name));
    if let Some(unit) = unit {
        live.insert("unit".into(), json!(unit));
    } else {
        live.insert("unit".into(), Value::Null);
    }
    live.insert("enabled".into(), json!(value("enabled") == "enabled"));
    live.insert("running".into(), json!(value("active") == "active"));
    // Triggers cannot be observed: they are what the last apply recorded.
    if let Some(triggers) = prior.and_then(|p| p.spec.get("triggers")) {
        live.insert("triggers".into(), triggers.clone());
    }
    let id = format!("{}:{name}", host.name);
    Ok(Some(state(id.clone(), only_desired(live, spec), json!({"id": id}))))
}

async fn read_command(host: &Host, prior: Option<&ResourceState>) -> Result<Option<ResourceState>, Diagnostic> {
    let Some(prior) = prior else { return Ok(None) };
    // A command's effect is seen only through `creates`: gone means it must run again.
    if let Some(creates) = text(&prior.spec, "creates") {
        let out =
            run(host, "checking `creates`", &format!("if [ -e {} ]; then echo yes; fi", quote(creates)), None).await?;
        if out.trim() != "yes" {
            return Ok(None);
        }
    }
    Ok(Some(prior.clone()))
}

async fn read_host(host: &Host, spec: &Value) -> Result<ResourceState, Diagnostic> {
    let mut script = String::from(
        r#"echo "os=$(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME")"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "cpus=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
echo "memoryKib=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
echo "hostname=$(cat /proc/sys/kernel/hostname)"
for d in /sys/block/*; do [ -e "$d/size" ] && echo "disk=${d##*/} $(cat "$d/size")"; done
for n in /sys/class/net/*; do echo "nic=${n##*/} $(cat "$n/address" 2>/dev/null)"; done
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sed 's/^/gpu=/'; fi
if command -v lspci >/dev/null 2>&1; then lspci -nn 2>/dev/null | grep -i -E 'vga|3d|display' | grep -i nvidia | sed 's/^/pcigpu=/'; fi
"#,
    );
    if let Some(sysctls) = spec.get("sysctls").and_then(Value::as_object) {
        for key in sysctls.keys() {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            script.push_str(&format!(
                "printf 'sysctl=%s %s\\n' {} \"$(cat {} 2>/dev/null)\"\n",
                quote(key),
                quote(&path)
            ));
        }
        // Keys strata wrote earlier and the spec no longer has show as extra, so the
        // plan rewrites the file without them.
        script.push_str(
            "if [ -f /etc/sysctl.d/90-strata.conf ]; then sed -n 's/^\\([^#][^ =]*\\) *=.*/\\1/p' /etc/sysctl.d/90-strata.conf | while read -r k; do printf 'sysctl=%s %s\\n' \"$k\" \"$(cat \"/proc/sys/$(printf %s \"$k\" | tr . /)\" 2>/dev/null)\"; done; fi\n",
        );
    }
    if let Some(modules) = spec.get("kernelModules").and_then(Value::as_array) {
        for module in modules.iter().filter_map(Value::as_str) {
            // /sys/module also lists modules built into the kernel.
            script.push_str(&format!(
                "if [ -d \"/sys/module/$(printf %s {m} | tr - _)\" ]; then printf 'module=%s\\n' {m}; fi\n",
                m = quote(module)
            ));
        }
        script.push_str(
            "if [ -f /etc/modules-load.d/strata.conf ]; then while read -r m; do [ -n \"$m\" ] && printf 'filemodule=%s\\n' \"$m\"; done < /etc/modules-load.d/strata.conf; fi\n",
        );
    }
    let out = run(host, "gathering facts", &script, None).await?;
    let mut facts = Map::new();
    let (mut disks, mut nics, mut gpus, mut pci_gpus) = (vec![], vec![], vec![], vec![]);
    let mut sysctls = Map::new();
    let mut modules = vec![];
    let mut file_modules: Vec<String> = vec![];
    let mut hostname = String::new();
    for line in out.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        match key {
            "os" | "kernel" | "arch" => {
                facts.insert(key.into(), json!(value));
            }
            "cpus" => {
                facts.insert("cpus".into(), json!(value.trim().parse::<u64>().unwrap_or(0)));
            }
            "memoryKib" => {
                facts.insert("memoryMib".into(), json!(value.trim().parse::<u64>().unwrap_or(0) / 1024));
            }
            "hostname" => hostname = value.trim().to_string(),
            "disk" => {
                let (name, sectors) = value.split_once(' ').unwrap_or((value, "0"));
                disks.push(json!({"name": name, "sizeBytes": sectors.trim().parse::<u64>().unwrap_or(0) * 512}));
            }
            "nic" => {
                let (name, mac) = value.split_once(' ').unwrap_or((value, ""));
                nics.push(json!({"name": name, "mac": mac.trim()}));
            }
            "gpu" => gpus.push(json!(value.trim())),
            "pcigpu" => pci_gpus.push(json!(value.trim())),
            "sysctl" => {
                let (k, v) = value.split_once(' ').unwrap_or((value, ""));
                sysctls.insert(k.to_string(), json!(v.trim()));
            }
            "module" => modules.push(json!(value.trim())),
            "filemodule" => file_modules.push(value.trim().to_string()),
            _ => {}
        }
    }
    let models = if gpus.is_empty() { pci_gpus } else { gpus };
    facts.insert("hostname".into(), json!(hostname));
    facts.insert("disks".into(), json!(disks));
    facts.insert("nics".into(), json!(nics));
    facts.insert("gpus".into(), json!({"count": models.len(), "models": models}));
    let mut live = Map::new();
    live.insert("host".into(), json!(host_name(spec)));
    live.insert("hostname".into(), json!(hostname));
    live.insert("sysctls".into(), Value::Object(sysctls));
    // Modules strata configured earlier that the spec no longer has show as extra.
    let wanted: Vec<&str> =
        spec.get("kernelModules").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    for m in file_modules {
        if !wanted.contains(&m.as_str()) && !modules.iter().any(|x| x == &json!(m)) {
            modules.push(json!(m));
        }
    }
    live.insert("kernelModules".into(), json!(modules));
    Ok(state(host.name.clone(), only_desired(live, spec), json!({"id": host.name, "facts": facts})))
}

/// Fields whose change cannot be made in place, per type.
fn replacing_fields(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "baremetal.file" | "baremetal.directory" => &["host", "path"],
        "baremetal.package" => &["host", "name", "manager"],
        "baremetal.service" => &["host", "name"],
        "baremetal.command" => &["host", "run", "undo", "creates", "unless", "env", "triggers"],
        "baremetal.host" => &["host"],
        _ => &[],
    }
}

/// Decides the action. A sysctl or module list shrinking is an update (the file is
/// rewritten); a package version change is an update (install that version).
pub(crate) fn plan(request: &PlanRequest) -> PlanResponse {
    let desired = &request.desired;
    let address = &request.resource.address;
    let resource_type = request.resource.resource_type.as_str();
    let host = host_name(desired);
    let mut diagnostics = vec![];
    if resource_type == "baremetal.file" && desired.get("content").is_some() && desired.get("source").is_some() {
        diagnostics.push(Diagnostic::error("a file takes `content` or `source`, not both").with_field("source"));
    }
    let action = match &request.current {
        None => PlannedAction::Create,
        Some(current) => {
            let reasons: Vec<String> = replacing_fields(resource_type)
                .iter()
                .filter(|f| current.spec.get(**f) != desired.get(**f))
                .map(|f| {
                    if resource_type == "baremetal.command" {
                        format!("`{f}` changed: a command is run again, not updated")
                    } else {
                        format!("`{f}` cannot change in place")
                    }
                })
                .collect();
            if !reasons.is_empty() {
                PlannedAction::Replace { reasons }
            } else if &current.spec == desired {
                PlannedAction::NoOp
            } else {
                PlannedAction::Update { patch: diff(&current.spec, desired) }
            }
        }
    };
    let unchanged = matches!(action, PlannedAction::NoOp);
    let current_outputs = request.current.as_ref().map(|c| c.outputs.clone());
    let planned_outputs = match resource_type {
        _ if unchanged => current_outputs.unwrap_or(Value::Null),
        // Facts are read at plan time, so blueprints and policies can use them.
        "baremetal.host" => {
            current_outputs.unwrap_or_else(|| json!({"id": host, "facts": unknown::opaque(address, "facts")}))
        }
        "baremetal.file" => {
            let path = text(desired, "path").unwrap_or_default();
            let sha = match text(desired, "content") {
                Some(c) if !unknown::is_unknown_str(c) => json!(sha256_hex(c.as_bytes())),
                _ => unknown::opaque(address, "sha256"),
            };
            json!({"id": format!("{host}:{path}"), "path": path, "sha256": sha})
        }
        "baremetal.directory" => {
            let path = text(desired, "path").unwrap_or_default();
            json!({"id": format!("{host}:{path}"), "path": path})
        }
        "baremetal.package" => json!({
            "id": format!("{host}:{}", text(desired, "name").unwrap_or_default()),
            "version": desired.get("version").cloned().unwrap_or_else(|| unknown::opaque(address, "version")),
        }),
        "baremetal.service" => json!({"id": format!("{host}:{}", text(desired, "name").unwrap_or_default())}),
        _ => json!({"id": address, "stdout": unknown::opaque(address, "stdout")}),
    };
    PlanResponse { diagnostics, action, planned_outputs, private: Value::Null }
}

/// Creates or updates; returns the new state.
pub(crate) async fn apply(host: &Host, request: &ApplyRequest, base: &Path) -> Result<ResourceState, Diagnostic> {
    let desired = &request.desired;
    match request.resource.resource_type.as_str() {
        "baremetal.file" => {
            let path = text(desired, "path").unwrap_or_default();
            let content = wanted_content(desired, base)?;
            let mut script = format!(
                "set -e\np={}\nd=$(dirname -- \"$p\")\nmkdir -p -- \"$d\"\nt=$(mktemp \"$d/.strata-XXXXXX\")\ntrap 'rm -f -- \"$t\"' EXIT\ncat > \"$t\"\nchmod {} \"$t\"\n",
                quote(path),
                quote(text(desired, "mode").unwrap_or("0644"))
            );
            if let Some(owner) = ownership(desired) {
                script.push_str(&format!("chown {} \"$t\"\n", quote(&owner)));
            }
            script.push_str("mv -f -- \"$t\" \"$p\"\ntrap - EXIT\n");
            run(host, &format!("writing `{path}`"), &script, Some(content.clone())).await?;
            let id = format!("{}:{path}", host.name);
            Ok(state(id.clone(), desired.clone(), json!({"id": id, "path": path, "sha256": sha256_hex(&content)})))
        }
        "baremetal.directory" => {
            let path = text(desired, "path").unwrap_or_default();
            let mut script = format!("set -e\nmkdir -p -- {p}\n", p = quote(path));
            if let Some(mode) = text(desired, "mode") {
                script.push_str(&format!("chmod {} {}\n", quote(mode), quote(path)));
            }
            if let Some(owner) = ownership(desired) {
                script.push_str(&format!("chown {} {}\n", quote(&owner), quote(path)));
            }
            run(host, &format!("making `{path}`"), &script, None).await?;
            let id = format!("{}:{path}", host.name);
            Ok(state(id.clone(), desired.clone(), json!({"id": id, "path": path})))
        }
        "baremetal.package" => {
            let name = text(desired, "name").unwrap_or_default();
            let version = text(desired, "version");
            let apt_target = quote(&match version {
                Some(v) => format!("{name}={v}"),
                None => name.to_string(),
            });
            let dnf_target = quote(&match version {
                Some(v) => format!("{name}-{v}"),
                None => name.to_string(),
            });
            let apt = format!(
                "export DEBIAN_FRONTEND=noninteractive\ninstall() {{ apt-get install -y -q --allow-downgrades -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {apt_target}; }}\ninstall || {{ apt-get update -q && install; }}"
            );
            let dnf = format!("dnf install -y -q {dnf_target}");
            let script = match package_manager(desired) {
                "apt" => apt,
                "dnf" => dnf,
                _ => format!("if command -v apt-get >/dev/null 2>&1; then\n{apt}\nelse\n{dnf}\nfi"),
            };
            run(host, &format!("installing `{name}`"), &script, None).await?;
            let live = read_package(host, desired).await?.ok_or_else(|| {
                Diagnostic::error(format!("host `{}`: `{name}` is not installed after installing it", host.name))
            })?;
            Ok(state(live.id, desired.clone(), live.outputs))
        }
        "baremetal.service" => {
            let name = text(desired, "name").unwrap_or_default();
            let current = request.current.as_ref();
            let mut script = format!("set -e\nn={}\n", quote(name));
            let unit_changed = desired.get("unit").is_some_and(|u| !u.is_null())
                && current.and_then(|c| c.spec.get("unit")) != desired.get("unit");
            if let Some(unit) = text(desired, "unit")
                && unit_changed
            {
                script.push_str(&format!(
                    "f={f}\nt=$(mktemp /etc/systemd/system/.strata-XXXXXX)\nprintf '%s' {u} > \"$t\"\nchmod 0644 \"$t\"\nmv -f -- \"$t\" \"$f\"\nsystemctl daemon-reload\n",
                    f = quote(&unit_path(name)),
                    u = quote(unit)
                ));
            }
            match desired.get("enabled").and_then(Value::as_bool) {
                Some(true) => script.push_str("systemctl enable --quiet -- \"$n\"\n"),
                Some(false) => script.push_str("systemctl disable --quiet -- \"$n\"\n"),
                None => {}
            }
            let triggers_changed = current.and_then(|c| c.spec.get("triggers")) != desired.get("triggers");
            let was_running = current.and_then(|c| c.spec.get("running")).and_then(Value::as_bool).unwrap_or(false);
            match desired.get("running").and_then(Value::as_bool) {
                Some(true) if was_running && (unit_changed || triggers_changed) => {
                    script.push_str("systemctl restart -- \"$n\"\n")
                }
                Some(true) => script.push_str("systemctl start -- \"$n\"\n"),
                Some(false) => script.push_str("systemctl stop -- \"$n\"\n"),
                None if current.is_some() && (unit_changed || triggers_changed) => {
                    script.push_str("systemctl try-restart -- \"$n\"\n")
                }
                None => {}
            }
            run(host, &format!("configuring service `{name}`"), &script, None).await?;
            let id = format!("{}:{name}", host.name);
            Ok(state(id.clone(), desired.clone(), json!({"id": id})))
        }
        "baremetal.command" => {
            let mut script = String::new();
            if let Some(Value::Object(env)) = desired.get("env") {
                for (k, v) in env {
                    if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || k.is_empty() {
                        return Err(Diagnostic::error(format!("`{k}` is not an environment variable name"))
                            .with_field(format!("env.{k}")));
                    }
                    script.push_str(&format!("export {k}={}\n", quote(v.as_str().unwrap_or(&v.to_string()))));
                }
            }
            if let Some(creates) = text(desired, "creates") {
                script.push_str(&format!("if [ -e {} ]; then exit 0; fi\n", quote(creates)));
            }
            if let Some(unless) = text(desired, "unless") {
                script.push_str(&format!("if sh -c {} >/dev/null 2>&1; then exit 0; fi\n", quote(unless)));
            }
            script.push_str(&format!("exec sh -c {}\n", quote(text(desired, "run").unwrap_or("true"))));
            let stdout = run(host, "running `run`", &script, None).await?;
            Ok(state(
                request.resource.address.clone(),
                desired.clone(),
                json!({"id": request.resource.address, "stdout": stdout}),
            ))
        }
        "baremetal.host" => {
            let mut script = String::from("set -e\n");
            if let Some(hostname) = text(desired, "hostname") {
                script.push_str(&format!(
                    "printf '%s\\n' {h} > /etc/hostname\nprintf '%s' {h} > /proc/sys/kernel/hostname\n",
                    h = quote(hostname)
                ));
            }
            if let Some(sysctls) = desired.get("sysctls").and_then(Value::as_object) {
                let mut file = String::from("# managed by strata\n");
                for (key, value) in sysctls {
                    let value = value.as_str().map(String::from).unwrap_or_else(|| value.to_string());
                    if key.contains('\n') || value.contains('\n') {
                        return Err(Diagnostic::error(format!("sysctl `{key}` has a newline")).with_field("sysctls"));
                    }
                    file.push_str(&format!("{key} = {value}\n"));
                    script.push_str(&format!(
                        "printf '%s' {} > {}\n",
                        quote(&value),
                        quote(&format!("/proc/sys/{}", key.replace('.', "/")))
                    ));
                }
                script.push_str(&format!(
                    "mkdir -p /etc/sysctl.d\nprintf '%s' {} > /etc/sysctl.d/90-strata.conf\n",
                    quote(&file)
                ));
            }
            if let Some(modules) = desired.get("kernelModules").and_then(Value::as_array) {
                let names: Vec<&str> = modules.iter().filter_map(Value::as_str).collect();
                script.push_str(&format!(
                    "mkdir -p /etc/modules-load.d\nprintf '%s\\n' {} > /etc/modules-load.d/strata.conf\n",
                    names.iter().map(|n| quote(n)).collect::<Vec<_>>().join(" ")
                ));
                for name in names {
                    script.push_str(&format!("modprobe -- {}\n", quote(name)));
                }
            }
            run(host, "configuring the host", &script, None).await?;
            let live = read_host(host, desired).await?;
            Ok(state(host.name.clone(), desired.clone(), live.outputs))
        }
        other => Err(Diagnostic::error(format!("the baremetal provider has no resource type `{other}`"))),
    }
}

fn ownership(spec: &Value) -> Option<String> {
    match (text(spec, "owner"), text(spec, "group")) {
        (Some(o), Some(g)) => Some(format!("{o}:{g}")),
        (Some(o), None) => Some(o.to_string()),
        (None, Some(g)) => Some(format!(":{g}")),
        (None, None) => None,
    }
}

/// Deletes; returns warnings.
pub(crate) async fn delete(host: &Host, request: &DeleteRequest) -> Result<Vec<Diagnostic>, Diagnostic> {
    let spec = &request.current.spec;
    match request.resource.resource_type.as_str() {
        "baremetal.file" => {
            let path = text(spec, "path").unwrap_or_default();
            run(host, &format!("removing `{path}`"), &format!("rm -f -- {}", quote(path)), None).await?;
            Ok(vec![])
        }
        "baremetal.directory" => {
            let path = text(spec, "path").unwrap_or_default();
            let out = run(
                host,
                &format!("removing `{path}`"),
                &format!("if [ -d {p} ]; then rmdir -- {p} 2>/dev/null || echo not-empty; fi", p = quote(path)),
                None,
            )
            .await?;
            Ok(if out.trim() == "not-empty" {
                vec![Diagnostic::warning(format!(
                    "host `{}`: `{path}` is not empty and was left in place (strata deletes only empty directories)",
                    host.name
                ))]
            } else {
                vec![]
            })
        }
        "baremetal.package" => {
            let name = quote(text(spec, "name").unwrap_or_default());
            let script = format!(
                "if command -v apt-get >/dev/null 2>&1; then DEBIAN_FRONTEND=noninteractive apt-get remove -y -q {name}; else dnf remove -y -q {name}; fi"
            );
            run(host, "removing a package", &script, None).await?;
            Ok(vec![])
        }
        "baremetal.service" => {
            let name = text(spec, "name").unwrap_or_default();
            let mut script = format!(
                "n={}\nsystemctl stop -- \"$n\" 2>/dev/null || true\nsystemctl disable --quiet -- \"$n\" 2>/dev/null || true\n",
                quote(name)
            );
            if spec.get("unit").is_some_and(|u| !u.is_null()) {
                script.push_str(&format!("rm -f -- {}\nsystemctl daemon-reload\n", quote(&unit_path(name))));
            }
            run(host, &format!("removing service `{name}`"), &script, None).await?;
            Ok(vec![])
        }
        "baremetal.command" => {
            if let Some(undo) = text(spec, "undo") {
                run(host, "running `undo`", &format!("exec sh -c {}", quote(undo)), None).await?;
            }
            Ok(vec![])
        }
        "baremetal.host" => {
            // A host is not deleted: only what strata wrote on it is removed.
            run(host, "cleaning up", "rm -f /etc/sysctl.d/90-strata.conf /etc/modules-load.d/strata.conf", None)
                .await?;
            Ok(vec![])
        }
        other => Err(Diagnostic::error(format!("the baremetal provider has no resource type `{other}`"))),
    }
}
