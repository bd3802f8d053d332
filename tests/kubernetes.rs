//! The `kubernetes` provider against a real API server: kube-apiserver 1.20 with its own
//! etcd and kube-controller-manager on loopback, started by `e2e/kubernetes/apiserver` for
//! each test (built once from Debian's source by `e2e/kubernetes/apiserver prepare`). A
//! test that cannot start it fails, naming the command; it never skips. Objects are edited
//! "by someone else" with the kubectl built from the same source.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const APISERVER: &str = "e2e/kubernetes/apiserver";

struct Cluster {
    name: String,
    kubeconfig: PathBuf,
    server: String,
}

impl Cluster {
    fn start(test: &str) -> Cluster {
        let name = format!("{test}-{}", std::process::id());
        let out = Command::new(APISERVER).args(["start", &name]).stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!("cannot run `{APISERVER} start {name}`: {e}; the kubernetes tests need it (`{APISERVER} prepare`)")
        });
        assert!(
            out.status.success(),
            "`{APISERVER} start {name}` failed: the kubernetes tests need a real API server; run `{APISERVER} prepare`\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value = serde_json::from_slice(&out.stdout).expect("apiserver start prints JSON");
        Cluster {
            name,
            kubeconfig: PathBuf::from(info["kubeconfig"].as_str().unwrap()),
            server: info["server"].as_str().unwrap().to_string(),
        }
    }

    fn kubectl(&self, args: &[&str], input: Option<&str>) -> Output {
        let cache = std::env::var("STRATA_CACHE").unwrap_or_else(|_| "/var/cache/strata".into());
        let kubectl = format!("{cache}/kubernetes/bin/kubectl");
        let mut command = Command::new(&kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {kubectl}: {e}"));
        if let Some(text) = input {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl get ... -o json`; `None` when it does not exist.
    fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all, None);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound") || err.contains("not found"), "kubectl get {args:?}: {err}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Installs the stand-in Flux CRDs the add-on blueprints need.
    fn install_flux_crds(&self) {
        let out = self.kubectl(&["apply", "-f", "e2e/kubernetes/crds/flux-helm.yaml"], None);
        assert!(out.status.success(), "installing the Flux CRDs: {}", text(&out));
        let out = self.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/helmreleases.helm.toolkit.fluxcd.io",
                "crd/helmrepositories.source.toolkit.fluxcd.io",
            ],
            None,
        );
        assert!(out.status.success(), "waiting for the Flux CRDs: {}", text(&out));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(APISERVER).args(["stop", &self.name]).output();
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn strata(stack: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--stack")
        .arg(stack)
        .args(args)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn catalogs() -> String {
    format!(
        "[{}, {}]",
        std::fs::canonicalize("blueprints").unwrap().display(),
        std::fs::canonicalize("tests/fixtures/kubernetes/catalog").unwrap().display()
    )
}

/// A stack with one kubernetes site and the given components (YAML list items).
fn write_stack(dir: &Path, site_config: &str, components: &str) -> PathBuf {
    let text = format!(
        "apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {{name: k8s-test}}\nspec:\n  catalog: {}\n  state: {{backend: local, path: state.json}}\n  sites:\n    cluster:\n      provider: kubernetes\n      config: {site_config}\n  components:\n{components}",
        catalogs()
    );
    let path = dir.join("stack.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn addons(gadgets_values: &str) -> String {
    format!(
        "    - {{name: gpu-operator, blueprint: addon-gpu-operator@^0.1, site: cluster, values: {{mig: {{strategy: mixed}}, nodeSelector: {{nvidia.com/gpu.present: \"true\"}}}}}}\n    - {{name: platform, blueprint: gadgets@^1, site: cluster, values: {gadgets_values}}}\n"
    )
}

#[test]
fn addons_converge_show_drift_report_conflicts_prune_and_destroy() {
    let cluster = Cluster::start("addons");
    cluster.install_flux_crds();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{{kubeconfig: {}}}", cluster.kubeconfig.display());
    let stack = write_stack(dir.path(), &config, &addons("{gadgets: [alpha, beta]}"));

    // Apply: a CRD and its custom objects in one run, namespaces first, Flux objects.
    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", text(&out));
    assert!(text(&out).contains("9 created"), "{}", text(&out));
    let crd = cluster.get(&["crd", "gadgets.example.com"]).expect("the CRD exists");
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "strata waited for the CRD to be Established: {crd}");
    for g in ["alpha", "beta"] {
        let gadget = cluster.get(&["-n", "platform", "gadget", g]).unwrap_or_else(|| panic!("gadget {g} exists"));
        assert_eq!(gadget["spec"]["size"], 3);
        assert_eq!(gadget["metadata"]["labels"]["strata.dev/stack"], "k8s-test");
        assert_eq!(
            gadget["metadata"]["annotations"]["strata.dev/address"],
            format!("cluster/platform/kubernetes.manifest/gadget-{g}")
        );
    }
    let release = cluster.get(&["-n", "gpu-operator", "helmrelease", "gpu-operator"]).expect("the HelmRelease exists");
    assert_eq!(release["spec"]["values"]["mig"]["strategy"], "mixed");
    assert_eq!(
        release["spec"]["values"]["node-feature-discovery"]["worker"]["nodeSelector"]["nvidia.com/gpu.present"],
        "true"
    );
    assert!(cluster.get(&["-n", "gpu-operator", "helmrepository", "nvidia"]).is_some());
    let deployment = cluster.get(&["-n", "platform", "deployment", "web"]).expect("the Deployment exists");
    let managers: Vec<&str> = deployment["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"strata"), "applied with field manager `strata`: {managers:?}");

    // Second plan: nothing, although the server filled in defaults and other managers
    // (the controllers) wrote status.
    let out = strata(&stack, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "a converged plan is empty:\n{}", text(&out));
    assert!(text(&out).contains("No changes"), "{}", text(&out));

    // Someone else takes a field over with their own field manager.
    let edit = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: platform}\ndata: {mode: slow}\n";
    let out = cluster
        .kubectl(&["apply", "--server-side", "--field-manager=intruder", "--force-conflicts", "-f", "-"], Some(edit));
    assert!(out.status.success(), "{}", text(&out));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("manifest.data.mode") && shown.contains("\"slow\" -> \"fast\""),
        "the drift is shown per field:\n{shown}"
    );
    assert!(shown.contains("conflict with \"intruder\": .data.mode"), "the conflict is a plan finding:\n{shown}");
    assert!(shown.contains("1 to update"), "only the edited object changes:\n{shown}");
    // Apply does not overwrite it silently...
    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("applying ConfigMap platform/settings: Apply failed with 1 conflict: conflict with \"intruder\""),
        "the apply stops at the conflict, with the server's message: {}",
        text(&out)
    );
    let cm = cluster.get(&["-n", "platform", "configmap", "settings"]).unwrap();
    assert_eq!(cm["data"]["mode"], "slow", "the other manager's value stays");
    // ...unless the resource says so.
    let stack = write_stack(dir.path(), &config, &addons("{gadgets: [alpha, beta], forceConflicts: true}"));
    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let cm = cluster.get(&["-n", "platform", "configmap", "settings"]).unwrap();
    assert_eq!(cm["data"]["mode"], "fast");

    // Objects that left the stack are pruned; the others stay.
    let stack = write_stack(dir.path(), &config, &addons("{gadgets: [beta], settings: false, forceConflicts: true}"));
    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 destroyed"), "{}", text(&out));
    assert!(cluster.get(&["-n", "platform", "configmap", "settings"]).is_none(), "the ConfigMap was pruned");
    assert!(cluster.get(&["-n", "platform", "gadget", "alpha"]).is_none(), "gadget alpha was pruned");
    assert!(cluster.get(&["-n", "platform", "gadget", "beta"]).is_some(), "gadget beta stays");
    let out = strata(&stack, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Destroy: everything strata made is gone, custom objects before their CRD, namespaces
    // last (the controller manager empties them).
    let out = strata(&stack, &["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cluster.get(&["crd", "gadgets.example.com"]).is_none());
    assert!(cluster.get(&["namespace", "platform"]).is_none());
    assert!(cluster.get(&["namespace", "gpu-operator"]).is_none());
    let labelled = cluster
        .get(&[
            "configmaps,deployments,namespaces,helmreleases,helmrepositories",
            "-A",
            "-l",
            "strata.dev/stack=k8s-test",
        ])
        .unwrap();
    assert_eq!(labelled["items"].as_array().unwrap().len(), 0, "nothing labelled with the stack remains: {labelled}");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["resources"].as_object().unwrap().len(), 0);
}

fn raw(objects: &str, wait: bool, timeout: u32) -> String {
    format!(
        "    - {{name: raw, blueprint: manifests@^1, site: cluster, values: {{wait: {wait}, timeout: {timeout}, objects: {objects}}}}}\n"
    )
}

#[test]
fn bad_input_and_unready_objects_are_reported_and_the_state_stays_valid() {
    let cluster = Cluster::start("errors");
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{{kubeconfig: {}}}", cluster.kubeconfig.display());
    let configmap = "{apiVersion: v1, kind: ConfigMap, metadata: {name: ok, namespace: default}, data: {a: b}}";
    let stack = write_stack(dir.path(), &config, &raw(&format!("[{configmap}]"), true, 300));
    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let state_path = dir.path().join("state.json");
    let state_before = std::fs::read(&state_path).unwrap();

    // Unknown kind: the resource, the field, where it came from, and the server.
    let widget = "{apiVersion: example.com/v1, kind: Widget, metadata: {name: w, namespace: default}}";
    let stack = write_stack(dir.path(), &config, &raw(&format!("[{configmap}, {widget}]"), true, 300));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("cluster/raw/kubernetes.manifest/widget-w"), "{shown}");
    assert!(
        shown.contains(&format!("the API server at {} has no kind `Widget` in `example.com/v1`", cluster.server)),
        "{shown}"
    );
    assert!(shown.contains("field: spec.manifest.kind") && shown.contains("objects.yaml.j2"), "{shown}");

    // An object the server's schema refuses: its message, at plan time.
    let service = "{apiVersion: v1, kind: Service, metadata: {name: bad, namespace: default}, spec: {ports: [{port: 70000, protocol: TCP}]}}";
    let stack = write_stack(dir.path(), &config, &raw(&format!("[{configmap}, {service}]"), true, 300));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("cluster/raw/kubernetes.manifest/service-bad: the server refuses Service default/bad"),
        "{shown}"
    );
    assert!(shown.contains("must be between 1 and 65535"), "the server's own message: {shown}");

    // A kubeconfig that is not one.
    std::fs::write(dir.path().join("broken"), "clusters: [this is not: a kubeconfig").unwrap();
    let stack = write_stack(dir.path(), "{kubeconfig: broken}", &raw(&format!("[{configmap}]"), true, 300));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("site cluster: cannot load the kubeconfig") && shown.contains("broken"), "{shown}");
    assert!(shown.contains("field: spec.sites.cluster.config.kubeconfig"), "{shown}");

    // An unknown context.
    let stack = write_stack(
        dir.path(),
        &format!("{{kubeconfig: {}, context: nowhere}}", cluster.kubeconfig.display()),
        &raw(&format!("[{configmap}]"), true, 300),
    );
    let out = strata(&stack, &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("context `nowhere`"), "{}", text(&out));

    // Wrong credentials: the server's answer and what to check.
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let token = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap().to_string();
    std::fs::write(dir.path().join("wrong-token"), kubeconfig.replace(&token, "not-the-token")).unwrap();
    let stack = write_stack(dir.path(), "{kubeconfig: wrong-token}", &raw(&format!("[{configmap}]"), true, 300));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("Unauthorized") && shown.contains("credentials"), "{shown}");

    // An unreachable server: the resource could not be planned, nothing is touched.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        dir.path().join("unreachable"),
        kubeconfig.replace(&cluster.server, &format!("https://127.0.0.1:{closed}")),
    )
    .unwrap();
    let stack = write_stack(dir.path(), "{kubeconfig: unreachable}", &raw(&format!("[{configmap}]"), true, 300));
    let out = strata(&stack, &["apply", "--auto-approve"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("could not be planned") && shown.contains("cluster/raw/kubernetes.manifest/configmap-ok"),
        "{shown}"
    );
    assert!(shown.contains(&format!("cannot reach the API server at https://127.0.0.1:{closed}")), "{shown}");
    assert_eq!(std::fs::read(&state_path).unwrap(), state_before, "nothing went wrong, so the state did not change");
    let out = strata(&stack, &["state", "list"]);
    assert!(out.status.success() && text(&out).contains("configmap-ok"), "the state is still valid: {}", text(&out));

    // Readiness: a Deployment no node can run is not Available; the report says so, the
    // object is recorded, and the next plan waits for it again.
    let deployment = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: stuck, namespace: default}, spec: {replicas: 1, selector: {matchLabels: {app: stuck}}, template: {metadata: {labels: {app: stuck}}, spec: {containers: [{name: c, image: registry.local/stuck:1}]}}}}";
    let stack = write_stack(dir.path(), &config, &raw(&format!("[{configmap}, {deployment}]"), true, 3));
    let out = strata(&stack, &["apply", "--auto-approve"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("Deployment default/stuck is not ready after 3 s"), "{shown}");
    assert!(cluster.get(&["-n", "default", "deployment", "stuck"]).is_some());
    let out = strata(&stack, &["state", "list"]);
    assert!(text(&out).contains("deployment-stuck"), "an object that is not ready is still recorded: {}", text(&out));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert!(shown.contains("was not ready after the last apply") && shown.contains("1 to update"), "{shown}");

    // An object someone else made is not taken over silently; `strata import` takes it.
    let out = cluster.kubectl(&["-n", "default", "create", "configmap", "foreign", "--from-literal=a=b"], None);
    assert!(out.status.success(), "{}", text(&out));
    let foreign = "{apiVersion: v1, kind: ConfigMap, metadata: {name: foreign, namespace: default}, data: {a: b}}";
    let stack = write_stack(dir.path(), &config, &raw(&format!("[{configmap}, {foreign}]"), true, 300));
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("ConfigMap default/foreign already exists on the cluster and was not made by this stack"),
        "{shown}"
    );
    assert!(
        shown.contains("strata import cluster/raw/kubernetes.manifest/configmap-foreign v1/ConfigMap/default/foreign"),
        "{shown}"
    );
    let out = strata(
        &stack,
        &["import", "cluster/raw/kubernetes.manifest/configmap-foreign", "v1/ConfigMap/default/foreign"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The imported object gets the stack's label with the next apply, and then converges.
    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("ConfigMap default/foreign lacks the label strata.dev/stack=k8s-test")
            && shown.contains("1 to update"),
        "{shown}"
    );
    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert!(text(&out).contains("configmap-foreign: updated"), "{}", text(&out));
    let foreign = cluster.get(&["-n", "default", "configmap", "foreign"]).unwrap();
    assert_eq!(foreign["metadata"]["labels"]["strata.dev/stack"], "k8s-test");
    assert_eq!(foreign["data"]["a"], "b");
}

#[test]
fn a_site_reached_through_a_kubeconfig_made_in_the_same_apply() {
    let cluster = Cluster::start("chained");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    // The `lab` site makes the kubeconfig (a stand-in for a resource that bootstraps a
    // cluster); the `cluster` site is reached through its output.
    let text_stack = format!(
        r#"apiVersion: strata.dev/v1alpha1
kind: Stack
metadata: {{name: chained}}
spec:
  catalog: {catalogs}
  state: {{backend: local, path: state.json}}
  sites:
    lab: {{provider: local}}
    cluster:
      provider: kubernetes
      config:
        kubeconfig: '{{{{ ref("lab/bootstrap/local.file/kubeconfig", "path") }}}}'
  components:
    - name: bootstrap
      blueprint: kubeconfig-file@^1
      site: lab
      values: {{content: {content}}}
    - name: raw
      blueprint: manifests@^1
      site: cluster
      values:
        objects:
          - {{apiVersion: v1, kind: Namespace, metadata: {{name: apps}}}}
          - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: hello, namespace: apps}}, data: {{a: b}}}}
"#,
        catalogs = catalogs(),
        content = serde_json::to_string(&kubeconfig).unwrap()
    );
    let stack = dir.path().join("stack.yaml");
    std::fs::write(&stack, text_stack).unwrap();

    let out = strata(&stack, &["plan"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("site `cluster` is reached through outputs of `lab/bootstrap/local.file/kubeconfig`"),
        "{shown}"
    );
    assert!(shown.contains("3 to create"), "{shown}");

    let out = strata(&stack, &["apply", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("kubeconfig").exists());
    let cm = cluster.get(&["-n", "apps", "configmap", "hello"]).expect("made through the kubeconfig of the same apply");
    assert_eq!(cm["data"]["a"], "b");

    let out = strata(&stack, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Destroy: the cluster's objects first, through the recorded kubeconfig, then the file.
    let out = strata(&stack, &["destroy", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cluster.get(&["-n", "apps", "configmap", "hello"]).is_none());
    assert!(cluster.get(&["namespace", "apps"]).is_none());
    assert!(!dir.path().join("kubeconfig").exists());
}
