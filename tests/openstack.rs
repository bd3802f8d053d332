//! The `openstack` provider against real OpenStack services on loopback: Keystone,
//! Neutron, Glance, Placement and Nova (fake virt driver with fake H100s), from PyPI, with a
//! private MariaDB and RabbitMQ, started by `e2e/openstack/cloud` for each test. A test that
//! cannot start them fails, naming the command; it never skips. Objects are changed "by
//! someone else" with the `openstack` CLI of the same venv.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const CLOUD: &str = "e2e/openstack/cloud";

struct Cloud {
    name: String,
    info: Value,
    // One cloud at a time: each runs a dozen services (about 2 GB) on the machine's cores.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cloud {
    fn start(test: &str, env: &[(&str, &str)]) -> Cloud {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("{test}-{}", std::process::id());
        let mut command = Command::new(CLOUD);
        command.args(["start", &name]).stdin(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap_or_else(|e| {
            panic!("cannot run `{CLOUD} start {name}`: {e}; the openstack tests need it (`{CLOUD} prepare`)")
        });
        assert!(
            out.status.success(),
            "`{CLOUD} start {name}` failed: the openstack tests need the test cloud; run `{CLOUD} prepare`\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        let info: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("`{CLOUD} start` printed no JSON ({e}): {line}"));
        Cloud { name, info, _serial: serial }
    }

    fn get(&self, key: &str) -> String {
        self.info[key].as_str().unwrap_or_else(|| panic!("no `{key}` in {}", self.info)).to_string()
    }

    fn clouds_yaml(&self) -> PathBuf {
        PathBuf::from(self.get("clouds_yaml"))
    }

    /// The `openstack` CLI as the test user (`--os-cloud strata-test`); stdout as JSON when
    /// it printed any.
    fn cli(&self, args: &[&str]) -> Value {
        self.cli_as("strata-test", args)
    }

    fn cli_as(&self, cloud: &str, args: &[&str]) -> Value {
        let cache = std::env::var("STRATA_CACHE").unwrap_or_else(|_| "/var/cache/strata".into());
        let openstack = format!("{cache}/openstack/venv/bin/openstack");
        let out = Command::new(&openstack)
            .args(["--os-cloud", cloud])
            .args(args)
            .env("OS_CLIENT_CONFIG_FILE", self.clouds_yaml())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {openstack}: {e}"));
        assert!(out.status.success(), "openstack {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Names of everything tagged with the stack: networks, subnets, routers, security
    /// groups, ports, floating IPs, servers.
    fn tagged(&self, stack: &str) -> Vec<String> {
        let tag = format!("strata-stack={stack}");
        let mut out = Vec::new();
        for kind in ["network", "subnet", "router", "security group", "port", "floating ip"] {
            let mut args: Vec<&str> = kind.split(' ').collect();
            args.extend(["list", "--tags", &tag, "-f", "json"]);
            for item in self.cli(&args).as_array().cloned().unwrap_or_default() {
                let name = item.get("Name").or_else(|| item.get("ID")).cloned().unwrap_or(Value::Null);
                out.push(format!("{kind}:{}", name.as_str().unwrap_or_default()));
            }
        }
        let servers = self.cli(&["--os-compute-api-version", "2.61", "server", "list", "--tags", &tag, "-f", "json"]);
        for s in servers.as_array().cloned().unwrap_or_default() {
            out.push(format!("server:{}", s["Name"].as_str().unwrap_or_default()));
        }
        out.sort();
        out
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = Command::new(CLOUD).args(["stop", &self.name]).output();
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn strata(cloud: &Cloud, stack: &Path, args: &[&str]) -> Output {
    strata_with(cloud, stack, args, &[])
}

fn strata_with(cloud: &Cloud, stack: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .arg("--stack")
        .arg(stack)
        .args(args)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .env("OS_CLIENT_CONFIG_FILE", cloud.clouds_yaml())
        .env_remove("OS_CLOUD")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The example stack, pointed at the test cloud.
fn stack(cloud: &Cloud, dir: &Path, gpu_count: u32, count: u32, site_config: Option<&str>) -> PathBuf {
    let mut text = std::fs::read_to_string("examples/openstack-gpu/stack.yaml")
        .unwrap()
        .replace(
            "catalog: [../../blueprints]",
            &format!("catalog: [{}]", std::fs::canonicalize("blueprints").unwrap().display()),
        )
        .replace("EXTERNAL-NETWORK-ID", &cloud.get("external_network_id"))
        .replace("image: cirros-fake", &format!("image: {}", cloud.get("image_name")))
        .replace("gpu: {model: H100, count: 1}", &format!("gpu: {{model: H100, count: {gpu_count}}}"))
        .replace("count: 2\n", &format!("count: {count}\n"));
    if let Some(config) = site_config {
        text = text.replace("      config:\n        cloud: strata-test\n        gpuAliases: {H100: h100}          # GPU model → the cloud's PCI alias\n", &format!("      config: {config}\n"));
    }
    let path = dir.join("stack.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn gpu_nodes_converge_show_drift_replace_on_flavor_change_and_destroy_everything() {
    let cloud = Cloud::start("os-main", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = stack(&cloud, dir.path(), 1, 2, None);

    let out = strata(&cloud, &path, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", text(&out));
    let servers = cloud.cli(&["server", "list", "-f", "json", "--long"]);
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 2, "{servers:?}");
    for s in servers {
        assert_eq!(s["Status"], "ACTIVE", "{s}");
        assert_eq!(s["Flavor"], "gpu1", "gpu {{model: H100, count: 1}} picks flavor gpu1: {s}");
    }
    let tagged = cloud.tagged("openstack-gpu");
    for expected in [
        "network:training",
        "subnet:training-nodes",
        "router:training",
        "security group:training-nodes",
        "server:training-node-0",
        "server:training-node-1",
    ] {
        assert!(tagged.iter().any(|t| t == expected), "{expected} is tagged with the stack: {tagged:?}");
    }
    let router = cloud.cli(&["router", "show", "training", "-f", "json"]);
    assert!(router["external_gateway_info"].to_string().contains(&cloud.get("external_network_id")), "{router}");

    // Converged.
    let out = strata(&cloud, &path, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "a converged plan is empty:\n{}", text(&out));

    // Someone deletes a rule: the next plan shows exactly that.
    let group = cloud.cli(&["security", "group", "show", "training-nodes", "-f", "json"]);
    let ssh_rule = group["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port_range_min"] == 22)
        .unwrap_or_else(|| panic!("an ssh rule: {group}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    cloud.cli(&["security", "group", "rule", "delete", &ssh_rule]);
    let out = strata(&cloud, &path, &["plan"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("openstack.security_group/nodes will be updated in place") && shown.contains("1 to update"),
        "{shown}"
    );
    let out = strata(&cloud, &path, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = strata(&cloud, &path, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Two GPUs per node: another flavor, so the servers are replaced, and the plan says why.
    let path = stack(&cloud, dir.path(), 2, 1, None);
    let out = strata(&cloud, &path, &["plan"]);
    let shown = text(&out);
    assert!(shown.contains("node-0 must be replaced") && shown.contains("`gpu` cannot change in place"), "{shown}");
    assert!(shown.contains("node-1 will be destroyed"), "{shown}");
    let out = strata(&cloud, &path, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let servers = cloud.cli(&["server", "list", "-f", "json", "--long"]);
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["Flavor"], "gpu2");

    // Destroy: nothing tagged with the stack remains.
    let out = strata(&cloud, &path, &["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cloud.tagged("openstack-gpu"), Vec::<String>::new());
    assert_eq!(cloud.cli(&["keypair", "list", "-f", "json"]).as_array().map(Vec::len), Some(0));
}

#[test]
fn bad_input_is_reported_with_the_site_and_field_and_the_state_stays_valid() {
    let cloud = Cloud::start("os-errors", &[("STRATA_OS_TOKEN_EXPIRATION", "20")]);
    let dir = tempfile::tempdir().unwrap();

    // An unknown flavor and an unknown image: plan errors on the fields, nothing made.
    let path = stack(&cloud, dir.path(), 1, 1, None);
    let text_stack =
        std::fs::read_to_string(&path).unwrap().replace("gpu: {model: H100, count: 1}", "flavor: gpu.giant");
    std::fs::write(&path, text_stack).unwrap();
    let out = strata(&cloud, &path, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("no flavor `gpu.giant` is visible to the project (cloud `strata-test`)"), "{shown}");
    assert!(shown.contains("field: spec.flavor") && shown.contains("nodes.yaml.j2"), "{shown}");
    let path = stack(&cloud, dir.path(), 7, 1, None);
    let out = strata(&cloud, &path, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("carries `pci_passthrough:alias` = h100:7") && shown.contains("GPU flavors here"),
        "{shown}"
    );
    let text_stack = std::fs::read_to_string(stack(&cloud, dir.path(), 1, 1, None))
        .unwrap()
        .replace(&format!("image: {}", cloud.get("image_name")), "image: no-such-image");
    std::fs::write(&path, text_stack).unwrap();
    let out = strata(&cloud, &path, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("no image named or with id `no-such-image`") && shown.contains("field: spec.image"),
        "{shown}"
    );
    assert!(
        !dir.path().join(".strata/state.json").exists()
            || std::fs::read_to_string(dir.path().join(".strata/state.json")).unwrap().contains("\"resources\": {}")
    );

    // An apply that outlives its token (20 s here): a security group, 22 s of waiting on
    // another site, then a second group through the same session, whose token has expired
    // meanwhile. strata authenticates again and goes on.
    let catalog = format!(
        "[{}, {}]",
        std::fs::canonicalize("blueprints").unwrap().display(),
        std::fs::canonicalize("tests/fixtures/openstack/catalog").unwrap().display()
    );
    let long = format!(
        r#"apiVersion: strata.dev/v1alpha1
kind: Stack
metadata: {{name: os-token}}
spec:
  catalog: {catalog}
  state: {{backend: local, path: .strata/state.json}}
  sites:
    sovereign: {{provider: openstack, config: {{cloud: strata-test}}}}
    here: {{provider: local}}
  components:
    - name: first
      blueprint: raw@^1
      site: sovereign
      values: {{resources: [{{type: openstack.security_group, name: a, spec: {{name: first, rules: []}}}}]}}
    - name: wait
      blueprint: raw@^1
      site: here
      values: {{resources: [{{type: local.command, name: sleep, spec: {{create: [sleep, "22"]}}, dependsOn: [sovereign/first/openstack.security_group/a]}}]}}
    - name: second
      blueprint: raw@^1
      site: sovereign
      values: {{resources: [{{type: openstack.security_group, name: b, spec: {{name: second, rules: []}}, dependsOn: [here/wait/local.command/sleep]}}]}}
"#
    );
    let path = dir.path().join("stack.yaml");
    std::fs::write(&path, long).unwrap();
    let out = strata(&cloud, &path, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "the expired token was renewed: {}", text(&out));
    let groups = cloud.cli(&["security", "group", "list", "--tags", "strata-stack=os-token", "-f", "json"]);
    assert_eq!(groups.as_array().map(Vec::len), Some(2), "{groups}");
    let out = strata(&cloud, &path, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state_path = dir.path().join(".strata/state.json");
    let state_before = std::fs::read(&state_path).unwrap();

    // A wrong password: Keystone's answer, the site, the field.
    let clouds = std::fs::read_to_string(cloud.clouds_yaml()).unwrap();
    let password = cloud.get("password");
    std::fs::write(dir.path().join("clouds.yaml"), clouds.replace(&password, "wrong-password")).unwrap();
    let variant = |config: &str| {
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("config: {cloud: strata-test}", &format!("config: {config}"));
        let variant = dir.path().join("variant.yaml");
        std::fs::write(&variant, text).unwrap();
        variant
    };
    let wrong = variant("{cloud: strata-test, cloudsFile: clouds.yaml}");
    let out = strata(&cloud, &wrong, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("refused the credentials of cloud `strata-test`"), "{shown}");
    assert!(shown.contains("field: spec.sites.sovereign.config.cloud"), "{shown}");

    // An unknown cloud name.
    let nowhere = variant("{cloud: nowhere}");
    let out = strata(&cloud, &nowhere, &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no cloud named `nowhere` in clouds.yaml"), "{}", text(&out));

    // Keystone down: nothing planned, nothing recorded, the site named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let auth_url = cloud.get("auth_url");
    let port = auth_url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().to_string();
    std::fs::write(
        dir.path().join("clouds.yaml"),
        clouds.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{closed}")),
    )
    .unwrap();
    let down = variant("{cloud: strata-test, cloudsFile: clouds.yaml}");
    let out = strata(&cloud, &down, &["apply", "--auto-approve"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains(&format!("cannot reach Keystone at http://127.0.0.1:{closed}")), "{shown}");
    assert_eq!(std::fs::read(&state_path).unwrap(), state_before, "the state did not change");

    let out = strata(&cloud, &path, &["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_crash_during_server_creation_is_healed_by_adoption_not_by_twins() {
    let cloud = Cloud::start("os-crash", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = stack(&cloud, dir.path(), 1, 2, None);
    // Kill strata while the servers are being created (their POST went out, ACTIVE not yet).
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--stack")
        .arg(&path)
        .args(["apply", "--auto-approve"])
        .env("NO_COLOR", "1")
        .env("OS_CLIENT_CONFIG_FILE", cloud.clouds_yaml())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut killed_mid_creation = false;
    while started.elapsed() < std::time::Duration::from_secs(120) {
        let servers = cloud.cli(&["server", "list", "-f", "json"]);
        if servers.as_array().is_some_and(|s| !s.is_empty()) {
            let _ = child.kill();
            killed_mid_creation = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.wait();
    assert!(killed_mid_creation, "strata was killed after a server existed and before the apply ended");
    // The lock of the killed run is stale: its holder is gone.
    let lock = dir.path().join(".strata/state.json.lock");
    if lock.exists() {
        let held: Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        let out = strata(&cloud, &path, &["force-unlock", held["id"].as_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }

    let out = strata(&cloud, &path, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let servers = cloud.cli(&["server", "list", "-f", "json"]);
    let mut names: Vec<String> =
        servers.as_array().unwrap().iter().map(|s| s["Name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, vec!["training-node-0", "training-node-1"], "exactly one server per address");
    let networks = cloud.cli(&["network", "list", "--tags", "strata-stack=openstack-gpu", "-f", "json"]);
    assert_eq!(networks.as_array().unwrap().len(), 1, "one network: {networks}");
    let out = strata(&cloud, &path, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = strata(&cloud, &path, &["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn ports_floating_ips_gpu_exhaustion_and_import() {
    let cloud = Cloud::start("os-extras", &[]);
    let dir = tempfile::tempdir().unwrap();
    let write = |gpu_servers: u32| {
        let text = format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {{name: os-extras}}\nspec:\n  catalog: [{}]\n  state: {{backend: local, path: state.json}}\n  sites:\n    sovereign: {{provider: openstack, config: {{cloud: strata-test}}}}\n  components:\n    - {{name: extras, blueprint: os-extras@^1, site: sovereign, values: {{externalNetworkId: {}, image: {}, gpuServers: {gpu_servers}}}}}\n",
            std::fs::canonicalize("tests/fixtures/openstack/catalog").unwrap().display(),
            cloud.get("external_network_id"),
            cloud.get("image_name"),
        );
        let path = dir.path().join("stack.yaml");
        std::fs::write(&path, text).unwrap();
        path
    };
    // A network made by hand is taken under management, not made twice.
    let handmade = cloud.cli(&["network", "create", "handmade", "-f", "json"]);
    let id = handmade["id"].as_str().unwrap().to_string();
    let path = write(0);
    let out = strata(&cloud, &path, &["import", "sovereign/extras/openstack.network/imported", &id]);
    assert!(out.status.success(), "{}", text(&out));

    let out = strata(&cloud, &path, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("openstack.network/imported: created"), "{}", text(&out));
    let networks = cloud.cli(&["network", "list", "--name", "handmade", "-f", "json"]);
    assert_eq!(networks.as_array().unwrap().len(), 1, "{networks}");
    let port = cloud.cli(&["port", "show", "web", "-f", "json"]);
    assert!(port["fixed_ips"].to_string().contains("10.70.0.50"), "{port}");
    let fips = cloud.cli(&["floating", "ip", "list", "--tags", "strata-stack=os-extras", "-f", "json"]);
    let fips = fips.as_array().unwrap();
    assert_eq!(fips.len(), 1, "{fips:?}");
    assert_eq!(fips[0]["Port"].as_str(), port["id"].as_str(), "the floating IP is on the port: {fips:?}");
    let out = strata(&cloud, &path, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Two servers with two GPUs each on a host with three: the second goes to ERROR, and
    // the report carries Nova's fault.
    let path = write(2);
    let out = strata(&cloud, &path, &["apply", "--auto-approve", "--parallelism", "1"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("went to ERROR") && shown.contains("No valid host was found"), "{shown}");
    // The failed server is recorded; the next plan replaces it, saying why.
    let out = strata(&cloud, &path, &["plan"]);
    let shown = text(&out);
    assert!(
        shown.contains("must be replaced") && shown.contains("the server is in ERROR (No valid host was found"),
        "{shown}"
    );

    let out = strata(&cloud, &path, &["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        cloud.cli(&["network", "list", "--name", "handmade", "-f", "json"]).as_array().unwrap().is_empty(),
        "the imported network was destroyed with the stack"
    );
}
