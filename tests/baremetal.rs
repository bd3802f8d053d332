//! The `baremetal` provider against real hosts: `sshd` and systemd in network namespaces,
//! made by `e2e/fleet/fleet` (see e2e/fleet/README.md). Each test makes its own fleet and
//! removes it when done. A test that cannot make its hosts fails, naming the command that
//! failed; it never skips. Needs root (network namespaces, overlay mounts).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const FLEET: &str = "e2e/fleet/fleet";

struct Fleet {
    name: String,
    json: Value,
}

impl Fleet {
    fn up(name: &str, hosts: usize, behind_bastion: usize) -> Fleet {
        let mut args = vec!["up".to_string(), name.to_string(), hosts.to_string()];
        if behind_bastion > 0 {
            args.push("--behind-bastion".into());
            args.push(behind_bastion.to_string());
        }
        // Left over from an interrupted run of the same test.
        let _ = Command::new(FLEET).args(["down", name]).output();
        let out = Command::new(FLEET).args(&args).stderr(Stdio::inherit()).output().unwrap_or_else(|e| {
            panic!(
                "cannot run `{FLEET} {}`: {e}; the baremetal tests need it (run `{FLEET} prepare` as root)",
                args.join(" ")
            )
        });
        assert!(
            out.status.success(),
            "`{FLEET} {}` failed ({}): the baremetal tests need real hosts; run `{FLEET} prepare` as root and see e2e/fleet/README.md\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("`{FLEET} up` printed no fleet JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout))
        });
        Fleet { name: name.to_string(), json }
    }

    fn hosts(&self) -> Vec<(String, String)> {
        self.host_list("hosts")
    }

    fn inner_hosts(&self) -> Vec<(String, String)> {
        self.host_list("innerHosts")
    }

    /// (name, address) of the hosts under `key` of the fleet JSON.
    fn host_list(&self, key: &str) -> Vec<(String, String)> {
        self.json[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["name"].as_str().unwrap_or_default().to_string(),
                    h["address"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn exec(&self, host: &str, command: &str) -> Output {
        Command::new(FLEET).args(["exec", &self.name, host, "--", "sh", "-c", command]).output().unwrap()
    }

    fn exec_ok(&self, host: &str, command: &str) -> String {
        let out = self.exec(host, command);
        assert!(out.status.success(), "`{command}` on {host} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(FLEET).args(args).output().unwrap();
        assert!(out.status.success(), "`{FLEET} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// Site config lines for one host of the fleet, plus `extra` config lines.
    fn one_host_config(&self, host: &str, address: &str, extra: &str) -> String {
        format!(
            "        identityFile: {}\n        knownHosts: {}\n{extra}        hosts: [{{name: {host}, address: {address}}}]\n",
            self.json["identityFile"].as_str().unwrap_or_default(),
            self.json["knownHosts"].as_str().unwrap_or_default()
        )
    }

    /// A stack with the `baremetal-gpu-node` blueprint on these hosts.
    fn stack(&self, dir: &Path, hosts: &[(String, String)], bastion: bool, extra_components: &str) -> PathBuf {
        let mut site = format!(
            "    rack:\n      provider: baremetal\n      config:\n        user: root\n        identityFile: {}\n        knownHosts: {}\n        concurrency: 20\n        connectTimeout: 5\n",
            self.json["identityFile"].as_str().unwrap_or_default(),
            self.json["knownHosts"].as_str().unwrap_or_default()
        );
        if bastion {
            site.push_str(&format!(
                "        bastion: {{address: {}, user: root}}\n",
                self.json["bastion"]["address"].as_str().unwrap_or_default()
            ));
        }
        site.push_str("        hosts:\n");
        for (name, address) in hosts {
            site.push_str(&format!("          - {{name: {name}, address: {address}}}\n"));
        }
        let names: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
        let stack = format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {}}}\nspec:\n  catalog: [{}]\n  sites:\n{site}  components:\n    - name: nodes\n      blueprint: baremetal-gpu-node\n      site: rack\n      values:\n        hosts: {}\n        packages: [{{name: strata-demo, version: \"1.0\"}}]\n{extra_components}",
            self.name,
            std::fs::canonicalize("blueprints").unwrap().display(),
            serde_json::to_string(&names).unwrap(),
        );
        let path = dir.join("stack.yaml");
        std::fs::write(&path, stack).unwrap();
        path
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(FLEET).args(["down", &self.name]).output();
    }
}

fn strata(stack: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--stack")
        .arg(stack)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn plan_json(stack: &Path) -> Value {
    let out = strata(stack, &["plan", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn changed(plan: &Value) -> Vec<(String, String)> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "no-op")
        .map(|c| (c["address"].as_str().unwrap().to_string(), c["action"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn ten_hosts_converge_show_drift_and_destroy() {
    let fleet = Fleet::up("bm-ten", 10, 0);
    let dir = tempfile::tempdir().unwrap();
    let hosts = fleet.hosts();
    let stack = fleet.stack(dir.path(), &hosts, false, "");

    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    for (name, _) in &hosts {
        let out = fleet.exec_ok(
            name,
            "cat /etc/strata/node.toml; cat /usr/share/strata-demo/VERSION; systemctl is-active strata-node-agent; cat /proc/sys/net/ipv4/ip_forward",
        );
        assert!(out.contains(&format!("node = \"{name}\"")), "{name}: {out}");
        assert!(out.contains("gpus = 0"), "facts reach the template: {out}");
        assert!(out.contains("1.0"), "{name}: {out}");
        assert!(out.contains("active"), "{name}: {out}");
    }
    assert_eq!(changed(&plan_json(&stack)), vec![], "the second plan must be empty");

    // Drift behind strata's back on two hosts: exactly those two show.
    let (first, second) = (&hosts[0].0, &hosts[1].0);
    fleet.exec_ok(first, "echo tampered > /etc/strata/gpu.conf");
    fleet.exec_ok(second, "systemctl stop strata-node-agent");
    let drift = changed(&plan_json(&stack));
    assert_eq!(
        drift,
        vec![
            (format!("rack/nodes/baremetal.file/{first}-gpu-conf"), "update".to_string()),
            (format!("rack/nodes/baremetal.service/{second}-agent"), "update".to_string()),
        ]
    );
    let fixed = strata(&stack, &["apply", "--auto-approve"]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(fleet.exec_ok(second, "systemctl is-active strata-node-agent").contains("active"));
    assert_eq!(changed(&plan_json(&stack)), vec![]);

    // A changed agent script restarts the service (its triggers hold the script's checksum).
    let pid =
        |host: &str| fleet.exec_ok(host, "systemctl show -p MainPID --value strata-node-agent").trim().to_string();
    let before = pid(first);
    let text_of_stack = std::fs::read_to_string(&stack).unwrap();
    std::fs::write(&stack, text_of_stack.replace("packages: [", "agentInterval: 7\n        packages: [")).unwrap();
    let restarted = strata(&stack, &["apply", "--auto-approve"]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    assert_ne!(pid(first), before, "the service was not restarted");
    assert!(fleet.exec_ok(first, "cat /usr/local/bin/strata-node-agent").contains("sleep 7"));

    let destroyed = strata(&stack, &["destroy", "--auto-approve"]);
    assert!(destroyed.status.success(), "{}", text(&destroyed));
    for (name, _) in &hosts {
        let out =
            fleet.exec(name, "test -e /etc/strata/node.toml || test -e /etc/systemd/system/strata-node-agent.service");
        assert!(!out.status.success(), "{name} still has strata's files");
    }
}

#[test]
fn hosts_behind_a_bastion_work_the_same() {
    let fleet = Fleet::up("bm-jump", 1, 2);
    let dir = tempfile::tempdir().unwrap();
    let inner = fleet.inner_hosts();
    assert_eq!(inner.len(), 2);
    // Not reachable without the bastion.
    let direct = Command::new("sh")
        .args(["-c", &format!("timeout 3 bash -c 'echo > /dev/tcp/{}/22'", inner[0].1)])
        .output()
        .unwrap();
    assert!(!direct.status.success(), "inner hosts must not be reachable directly");
    let stack = fleet.stack(dir.path(), &inner, true, "");
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    for (name, _) in &inner {
        assert!(fleet.exec_ok(name, "cat /etc/strata/gpu.conf").contains("mig-strategy=none"));
    }
    assert_eq!(changed(&plan_json(&stack)), vec![]);
}

#[test]
fn a_host_down_fails_alone_and_a_changed_host_key_is_refused() {
    let fleet = Fleet::up("bm-faults", 3, 0);
    let dir = tempfile::tempdir().unwrap();
    let hosts = fleet.hosts();
    let stack = fleet.stack(dir.path(), &hosts, false, "");
    let down = &hosts[2].0;
    fleet.run(&["stop", &fleet.name, down]);
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    let out = text(&applied);
    assert_eq!(applied.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("host `{down}`: cannot connect")), "{out}");
    for (name, _) in &hosts[..2] {
        let files = fleet.exec(name, "cat /etc/strata/node.toml");
        assert!(String::from_utf8_lossy(&files.stdout).contains(name.as_str()), "{name} was not configured:\n{out}");
    }
    fleet.run(&["start", &fleet.name, down]);
    let converged = strata(&stack, &["apply", "--auto-approve"]);
    assert!(converged.status.success(), "{}", text(&converged));

    let rekeyed = &hosts[0].0;
    fleet.run(&["rekey", &fleet.name, rekeyed]);
    fleet.exec_ok(rekeyed, "echo drift > /etc/strata/gpu.conf");
    let refused = strata(&stack, &["plan"]);
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("the host key of {rekeyed}")), "{out}");
    assert_eq!(out.matches("SHA256:").count(), 2, "both fingerprints are shown, once: {out}");
    assert!(out.contains("for 6 resources:"), "{out}");
}

#[test]
fn hostile_values_stay_literal_data() {
    let fleet = Fleet::up("bm-hostile", 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let hosts = fleet.hosts();
    let host = &hosts[0].0;
    let hostile = [
        "; touch /tmp/pwned1",
        "$(touch /tmp/pwned2)",
        "`touch /tmp/pwned3`",
        "it's \"quoted\"",
        "new\nline; touch /tmp/pwned4",
    ];
    let mut extra = String::from(
        "    - name: hostile\n      blueprint: hostile-files\n      site: rack\n      values:\n        host: ",
    );
    extra.push_str(host);
    extra.push_str("\n        values: ");
    extra.push_str(&serde_json::to_string(&hostile).unwrap());
    extra.push('\n');
    let catalog = dir.path().join("catalog/hostile-files/templates");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(
        dir.path().join("catalog/hostile-files/blueprint.yaml"),
        "apiVersion: strata.dev/v1alpha1\nkind: Blueprint\nmetadata: {name: hostile-files, version: 1.0.0}\nspec:\n  inputs:\n    type: object\n    properties:\n      host: {type: string}\n      values: {type: array, items: {type: string}}\n",
    )
    .unwrap();
    std::fs::write(
        catalog.join("files.yaml.j2"),
        "{% for v in inputs['values'] %}\n---\ntype: baremetal.file\nname: f{{ loop.index }}\nspec:\n  host: {{ inputs.host }}\n  path: {{ ('/srv/hostile/' ~ v) | tojson }}\n  content: {{ v | tojson }}\n  owner: root\n{% endfor %}\n---\ntype: baremetal.directory\nname: d\nspec: {host: {{ inputs.host }}, path: {{ '/srv/dir $(touch /tmp/pwned5)' | tojson }}}\n---\ntype: baremetal.service\nname: s\nspec: {host: {{ inputs.host }}, name: 'x;touch', running: false}\n",
    )
    .unwrap();
    let stack = fleet.stack(dir.path(), &hosts, false, &extra);
    let text_of_stack = std::fs::read_to_string(&stack)
        .unwrap()
        .replace("catalog: [", &format!("catalog: [{}, ", dir.path().join("catalog").display()));
    std::fs::write(&stack, text_of_stack).unwrap();
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    let out = text(&applied);
    // The service name is refused by its schema before anything runs.
    assert_eq!(applied.status.code(), Some(1), "{out}");
    assert!(out.contains("x;touch"), "{out}");
    // Without the service, everything applies and every value is literal.
    let template = catalog.join("files.yaml.j2");
    let t = std::fs::read_to_string(&template).unwrap();
    std::fs::write(&template, &t[..t.find("---\ntype: baremetal.service").unwrap()]).unwrap();
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    // Values with `/` in them are paths into subfolders: still literal names.
    let listing = fleet.exec_ok(
        host,
        "find /srv/hostile -type f -exec sh -c 'printf \"%s\\0\" \"$1\"; cat \"$1\"; printf \"\\0\"' _ {} \\;",
    );
    let mut found: Vec<(String, String)> = listing
        .split('\0')
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect();
    found.sort();
    let mut wanted: Vec<(String, String)> =
        hostile.iter().map(|v| (format!("/srv/hostile/{v}"), v.to_string())).collect();
    wanted.sort();
    assert_eq!(found, wanted, "every hostile value is a literal file name and content");
    fleet.exec_ok(host, "test -d '/srv/dir $(touch /tmp/pwned5)'");
    let pwned = fleet.exec(host, "ls /tmp/pwned* 2>/dev/null");
    assert!(String::from_utf8_lossy(&pwned.stdout).trim().is_empty(), "a value ran as a command");
}

/// A stack with one component of an inline blueprint, on the fleet's hosts.
fn inline_stack(dir: &Path, site_config: &str, template: &str) -> PathBuf {
    let bp = dir.join("catalog/inline/templates");
    std::fs::create_dir_all(&bp).unwrap();
    std::fs::write(
        dir.join("catalog/inline/blueprint.yaml"),
        "apiVersion: strata.dev/v1alpha1\nkind: Blueprint\nmetadata: {name: inline, version: 1.0.0}\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(bp.join("main.yaml.j2"), template).unwrap();
    let stack = dir.join("stack.yaml");
    std::fs::write(
        &stack,
        format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {{name: inline}}\nspec:\n  catalog: [./catalog]\n  sites:\n    rack:\n      provider: baremetal\n      config:\n{site_config}  components:\n    - {{name: c, blueprint: inline, site: rack}}\n"
        ),
    )
    .unwrap();
    stack
}

#[test]
fn ssh_config_supplies_address_user_and_key() {
    let fleet = Fleet::up("bm-sshcfg", 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let host = &fleet.hosts()[0].0;
    // The site names only the alias: HostName, User and IdentityFile come from ssh_config.
    let config = format!(
        "        sshConfig: {}\n        knownHosts: {}\n        hosts: [{{name: {host}, address: {host}}}]\n",
        fleet.json["sshConfig"].as_str().unwrap(),
        fleet.json["knownHosts"].as_str().unwrap()
    );
    let stack = inline_stack(
        dir.path(),
        &config,
        &format!("type: baremetal.file\nname: f\nspec: {{host: {host}, path: /root/via-ssh-config, content: ok}}\n"),
    );
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(fleet.exec_ok(host, "cat /root/via-ssh-config"), "ok");
}

#[test]
fn a_connection_killed_mid_apply_is_retried() {
    let fleet = Fleet::up("bm-kill", 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let (host, address) = fleet.hosts()[0].clone();
    let config = fleet.one_host_config(&host, &address, "");
    let stack = inline_stack(
        dir.path(),
        &config,
        &format!(
            "type: baremetal.command\nname: slow\nspec: {{host: {host}, run: \"echo start >> /root/log; sleep 4; echo end >> /root/log\"}}\n"
        ),
    );
    let apply = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--stack", stack.to_str().unwrap(), "apply", "--auto-approve"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !fleet.exec(&host, "grep -q start /root/log").status.success() {
        assert!(started.elapsed().as_secs() < 30, "the command never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Kill every SSH session on the host (sshd's per-connection processes).
    fleet.exec_ok(&host, "pkill -KILL -f '[s]shd: root' || true");
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = fleet.exec_ok(&host, "cat /root/log");
    assert!(log.matches("start").count() >= 2, "the command ran again after the connection dropped: {log}");
    assert!(log.ends_with("end\n"), "{log}");
}

#[test]
fn a_moved_file_is_replaced_and_the_old_one_removed() {
    let fleet = Fleet::up("bm-move", 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let (host, address) = fleet.hosts()[0].clone();
    let config = fleet.one_host_config(&host, &address, "");
    let file =
        |path: &str| format!("type: baremetal.file\nname: f\nspec: {{host: {host}, path: {path}, content: moved}}\n");
    let stack = inline_stack(dir.path(), &config, &file("/root/a"));
    assert!(strata(&stack, &["apply", "--auto-approve"]).status.success());
    inline_stack(dir.path(), &config, &file("/root/b"));
    let plan = strata(&stack, &["plan"]);
    assert!(text(&plan).contains("must be replaced"), "{}", text(&plan));
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(fleet.exec_ok(&host, "cat /root/b"), "moved");
    assert!(!fleet.exec(&host, "test -e /root/a").status.success(), "the old file was left behind");
}

#[test]
fn a_command_over_its_timeout_fails_and_is_not_run_twice() {
    let fleet = Fleet::up("bm-timeout", 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let (host, address) = fleet.hosts()[0].clone();
    let config = fleet.one_host_config(&host, &address, "        commandTimeout: 2\n");
    let stack = inline_stack(
        dir.path(),
        &config,
        &format!(
            "type: baremetal.command\nname: slow\nspec: {{host: {host}, run: \"echo start >> /root/log; sleep 6\"}}\n"
        ),
    );
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert_eq!(applied.status.code(), Some(1), "{}", text(&applied));
    assert!(text(&applied).contains("did not finish within 2 s"), "{}", text(&applied));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(fleet.exec_ok(&host, "grep -c start /root/log").trim(), "1", "a timed-out command was run again");
}

#[test]
fn a_sysctl_removed_from_the_spec_leaves_the_file() {
    let fleet = Fleet::up("bm-sysctl", 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let (host, address) = fleet.hosts()[0].clone();
    let config = fleet.one_host_config(&host, &address, "");
    let spec =
        |sysctls: &str| format!("type: baremetal.host\nname: h\nspec: {{host: {host}, sysctls: {{{sysctls}}}}}\n");
    let stack =
        inline_stack(dir.path(), &config, &spec("net.ipv4.ip_forward: \"1\", net.ipv4.conf.all.forwarding: \"1\""));
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(changed(&plan_json(&stack)), vec![]);
    inline_stack(dir.path(), &config, &spec("net.ipv4.ip_forward: \"1\""));
    assert_eq!(changed(&plan_json(&stack)), vec![("rack/c/baremetal.host/h".to_string(), "update".to_string())]);
    let applied = strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(!fleet.exec_ok(&host, "cat /etc/sysctl.d/90-strata.conf").contains("conf.all.forwarding"));
    assert_eq!(changed(&plan_json(&stack)), vec![]);
}
