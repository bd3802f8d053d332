//! The `strata` binary on a copy of the quickstart, with the real `local` provider.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Quickstart {
    dir: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() == "out" || entry.file_name() == ".strata" {
                continue;
            }
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Quickstart {
    fn new() -> Quickstart {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(Path::new("examples/quickstart"), &dir.path().join("examples/quickstart"));
        copy_dir(Path::new("blueprints"), &dir.path().join("blueprints"));
        Quickstart { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("examples/quickstart")
    }

    fn strata(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .current_dir(self.root())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn filter(&self, text: &str) -> String {
        let root = self.dir.path().display().to_string();
        let text = text.replace(&root, "[TMP]");
        // Durations vary from run to run.
        let re = |t: &str| {
            let mut out = String::new();
            let mut rest = t;
            while let Some(i) = rest.find("s)") {
                let (head, tail) = rest.split_at(i);
                match head.rfind('(') {
                    Some(open)
                        if head[open + 1..].chars().all(|c| c.is_ascii_digit() || c == '.')
                            && open + 1 < head.len() =>
                    {
                        out.push_str(&head[..open]);
                        out.push_str("(TIME");
                    }
                    _ => out.push_str(head),
                }
                out.push_str("s)");
                rest = &tail[2..];
            }
            out.push_str(rest);
            out
        };
        re(&text)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn quickstart_applies_then_plans_nothing_then_sees_drift() {
    let q = Quickstart::new();
    let applied = q.strata(&["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}{}", stdout(&applied), stderr(&applied));
    insta::assert_snapshot!("first_apply", q.filter(&stdout(&applied)));
    assert_eq!(std::fs::read_to_string(q.root().join("out/gpu-1/motd")).unwrap(), "gpu-1 is managed by base\n");

    let again = q.strata(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "{}{}", stdout(&again), stderr(&again));
    assert!(stdout(&again).starts_with("No changes."));

    std::fs::write(q.root().join("out/gpu-1/motd"), "edited by hand\n").unwrap();
    let drift = q.strata(&["plan", "--detailed-exitcode"]);
    assert_eq!(drift.status.code(), Some(2), "{}{}", stdout(&drift), stderr(&drift));
    insta::assert_snapshot!("drift_plan", q.filter(&stdout(&drift)));

    let json = q.strata(&["plan", "--json"]);
    assert!(json.status.success());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    insta::assert_json_snapshot!("drift_plan_json", value, {".state.lineage" => "[lineage]"});

    let fixed = q.strata(&["apply", "--auto-approve"]);
    assert!(fixed.status.success());
    assert!(stdout(&fixed).contains("0 created, 1 updated"), "{}", stdout(&fixed));
    assert_eq!(std::fs::read_to_string(q.root().join("out/gpu-1/motd")).unwrap(), "gpu-1 is managed by base\n");

    let listed = q.strata(&["state", "list"]);
    insta::assert_snapshot!("state_list", stdout(&listed));

    let destroyed = q.strata(&["destroy", "--auto-approve"]);
    assert!(destroyed.status.success(), "{}{}", stdout(&destroyed), stderr(&destroyed));
    assert!(stdout(&destroyed).contains("5 destroyed"), "{}", stdout(&destroyed));
    assert!(!q.root().join("out/gpu-1/motd").exists());
    assert!(!q.root().join("out/index").exists());
    assert_eq!(stdout(&q.strata(&["state", "list"])), "");
}

#[test]
fn saved_plan_is_applied_exactly_and_refused_after_the_state_moved() {
    let q = Quickstart::new();
    let planned = q.strata(&["plan", "--out", "first.plan"]);
    assert!(planned.status.success(), "{}", stderr(&planned));
    let applied = q.strata(&["apply", "first.plan"]);
    assert!(applied.status.success(), "{}{}", stdout(&applied), stderr(&applied));
    assert!(stdout(&applied).contains("5 created"));

    std::fs::write(q.root().join("out/gpu-2/motd"), "drift\n").unwrap();
    assert!(q.strata(&["plan", "--out", "second.plan"]).status.success());
    // Someone else applies in between.
    assert!(q.strata(&["apply", "--auto-approve"]).status.success());
    let refused = q.strata(&["apply", "second.plan"]);
    assert_eq!(refused.status.code(), Some(1));
    insta::assert_snapshot!("stale_plan_refused", q.filter(&stderr(&refused)));

    let garbage = q.root().join("garbage.plan");
    std::fs::write(&garbage, "not a plan").unwrap();
    let refused = q.strata(&["apply", "garbage.plan"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("is not a saved strata plan"), "{}", stderr(&refused));
}

#[test]
fn a_second_apply_while_one_runs_is_refused_naming_the_holder() {
    let q = Quickstart::new();
    // Make the first apply slow: a command that sleeps.
    let stack = q.root().join("stack.yaml");
    let text = std::fs::read_to_string(&stack).unwrap();
    std::fs::write(
        &stack,
        text.replace(
            "values: {hosts: [gpu-1, gpu-2]}",
            "values: {hosts: [gpu-1, gpu-2]}\n    - name: slow\n      blueprint: slow\n      site: lab",
        ),
    )
    .unwrap();
    let slow = q.dir.path().join("blueprints/slow");
    std::fs::create_dir_all(slow.join("templates")).unwrap();
    std::fs::write(
        slow.join("blueprint.yaml"),
        "apiVersion: strata.dev/v1alpha1\nkind: Blueprint\nmetadata: {name: slow, version: 1.0.0}\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(
        slow.join("templates/sleep.yaml.j2"),
        "type: local.command\nname: sleep\nspec: {create: [sleep, \"3\"]}\n",
    )
    .unwrap();

    let mut first = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["apply", "--auto-approve"])
        .current_dir(q.root())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = q.root().join(".strata/state.json.lock");
    let started = std::time::Instant::now();
    while !lock.exists() {
        assert!(started.elapsed().as_secs() < 30, "the first apply never took the lock");
        if let Some(status) = first.try_wait().unwrap() {
            let out = first.wait_with_output().unwrap();
            panic!("the first apply ended before taking the lock ({status}): {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = q.strata(&["apply", "--auto-approve"]);
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(err.contains("the state is locked by"), "{err}");
    assert!(err.contains(&format!("(pid {})", first.id())), "{err}");
    assert!(err.contains("running `apply`"), "{err}");
    assert!(err.contains("strata force-unlock"), "{err}");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!lock.exists(), "the lock outlived the apply");
}

#[test]
fn force_unlock_removes_a_stale_lock() {
    let q = Quickstart::new();
    std::fs::create_dir_all(q.root().join(".strata")).unwrap();
    std::fs::write(
        q.root().join(".strata/state.json.lock"),
        r#"{"id":"1234","who":"ghost","host":"elsewhere","pid":1,"operation":"apply","since":"2026-01-01T00:00:00Z","path":"x"}"#,
    )
    .unwrap();
    let refused = q.strata(&["plan"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("locked by ghost@elsewhere (pid 1), running `apply` since 2026-01-01T00:00:00Z"),
        "{}",
        stderr(&refused)
    );
    let wrong = q.strata(&["force-unlock", "999"]);
    assert_eq!(wrong.status.code(), Some(1));
    let unlocked = q.strata(&["force-unlock", "1234"]);
    assert!(unlocked.status.success(), "{}", stderr(&unlocked));
    assert!(q.strata(&["plan"]).status.success());
}

#[test]
fn failed_command_skips_dependents_and_the_next_apply_converges() {
    let q = Quickstart::new();
    // The `index` command fails: nothing depends on it but the banner component (dependsOn base).
    let template = q.dir.path().join("blueprints/node-config/templates/files.yaml.j2");
    let original = std::fs::read_to_string(&template).unwrap();
    std::fs::write(
        &template,
        original.replace(
            "create: [\"sh\", \"-c\", \"ls",
            "create: [\"sh\", \"-c\", \"test -e {{ site.config.root }}/go && ls",
        ),
    )
    .unwrap();
    let failed = q.strata(&["apply", "--auto-approve"]);
    assert_eq!(failed.status.code(), Some(1));
    let out = q.filter(&stdout(&failed));
    insta::assert_snapshot!("failed_apply_report", out);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.root().join(".strata/state.json")).unwrap()).unwrap();
    let addresses: Vec<&String> = state["resources"].as_object().unwrap().keys().collect();
    assert_eq!(addresses.len(), 3, "{addresses:?}");

    std::fs::write(q.root().join("out/go"), "").unwrap();
    let converged = q.strata(&["apply", "--auto-approve"]);
    assert!(converged.status.success(), "{}{}", stdout(&converged), stderr(&converged));
    assert!(stdout(&converged).contains("2 created"), "{}", stdout(&converged));
    assert_eq!(q.strata(&["plan", "--detailed-exitcode"]).status.code(), Some(0));
}

#[test]
fn apply_without_a_terminal_asks_for_auto_approve() {
    let q = Quickstart::new();
    let refused = q.strata(&["apply"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("pass `--auto-approve`"), "{}", stderr(&refused));
    assert!(!q.root().join("out").exists());
}

#[test]
fn missing_stack_file_says_what_to_do() {
    let q = Quickstart::new();
    let out = q.strata(&["--stack", "nope.yaml", "plan"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("missing_stack", q.filter(&stderr(&out)));
}

#[test]
fn catalog_and_graph_commands() {
    let q = Quickstart::new();
    let list = q.strata(&["catalog", "list"]);
    assert!(list.status.success());
    insta::assert_snapshot!("catalog_list", stdout(&list));
    let show = q.strata(&["catalog", "show", "node-config@^1"]);
    assert!(show.status.success(), "{}", stderr(&show));
    insta::assert_snapshot!("catalog_show", q.filter(&stdout(&show)));
    let missing = q.strata(&["catalog", "show", "node-config@^3"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no version of `node-config` matches `^3`; found: 1.2.0"),
        "{}",
        stderr(&missing)
    );
    let graph = q.strata(&["graph"]);
    assert!(graph.status.success());
    insta::assert_snapshot!("graph", stdout(&graph));
}

#[test]
fn import_takes_an_existing_file_under_management() {
    let q = Quickstart::new();
    std::fs::create_dir_all(q.root().join("out/gpu-1")).unwrap();
    std::fs::write(q.root().join("out/gpu-1/motd"), "hand made\n").unwrap();
    let missing = q.strata(&["import", "lab/base/local.file/nope", "out/x"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("renders no resource at `lab/base/local.file/nope`"), "{}", stderr(&missing));
    let imported = q.strata(&["import", "lab/base/local.file/gpu-1-motd", "out/gpu-1/motd"]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let plan = q.strata(&["plan", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let change =
        value["changes"].as_array().unwrap().iter().find(|c| c["address"] == "lab/base/local.file/gpu-1-motd").unwrap();
    assert_eq!(change["action"], "update");
    assert_eq!(change["before"]["content"], "hand made\n");
    let again = q.strata(&["import", "lab/base/local.file/gpu-1-motd", "out/gpu-1/motd"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("is already managed"), "{}", stderr(&again));
}

#[test]
fn usage_errors_exit_1_not_2() {
    let q = Quickstart::new();
    let out = q.strata(&["plan", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(1));
}

/// Writes a one-blueprint stack next to the quickstart's catalog and returns its folder.
fn custom_stack(q: &Quickstart, name: &str, inputs: &str, template: &str, values: &str) -> PathBuf {
    let bp = q.dir.path().join(format!("blueprints/{name}"));
    std::fs::create_dir_all(bp.join("templates")).unwrap();
    std::fs::write(
        bp.join("blueprint.yaml"),
        format!("apiVersion: strata.dev/v1alpha1\nkind: Blueprint\nmetadata: {{name: {name}, version: 1.0.0}}\nspec:\n  inputs:\n{inputs}"),
    )
    .unwrap();
    std::fs::write(bp.join("templates/main.yaml.j2"), template).unwrap();
    let dir = q.dir.path().join(format!("stacks/{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stack.yaml"),
        format!("apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  catalog: [../../blueprints]\n  sites:\n    lab: {{provider: local, config: {{root: ./out}}}}\n  components:\n    - name: c\n      blueprint: {name}\n      site: lab\n      values: {values}\n"),
    )
    .unwrap();
    dir
}

fn strata_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn sensitive_values_never_show_in_failures() {
    let q = Quickstart::new();
    let dir = custom_stack(
        &q,
        "secretive",
        "    type: object\n    properties:\n      token: {type: string, writeOnly: true}\n",
        "type: local.command\nname: enroll\nspec:\n  create: [sh, -c, \"echo refusing token {{ inputs.token }} >&2; exit 1\", \"{{ inputs.token }}\"]\n",
        "{token: hunter2-s3cr3t}",
    );
    let out = strata_in(&dir, &["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("refusing token (sensitive)"), "{all}");
}

#[test]
fn create_before_destroy_runs_the_new_command_then_destroys_the_old_one() {
    let q = Quickstart::new();
    let template = "type: local.command\nname: job\nlifecycle: {createBeforeDestroy: true}\nspec:\n  create: [sh, -c, \"echo created-{{ inputs.n }} >> log\"]\n  destroy: [sh, -c, \"echo destroyed >> log\"]\n";
    let inputs = "    type: object\n    properties:\n      n: {type: integer}\n";
    let dir = custom_stack(&q, "cbd", inputs, template, "{n: 1}");
    assert!(strata_in(&dir, &["apply", "--auto-approve"]).status.success());
    custom_stack(&q, "cbd", inputs, template, "{n: 2}");
    let plan = strata_in(&dir, &["plan"]);
    assert!(stdout(&plan).contains("must be replaced"), "{}", stdout(&plan));
    let replaced = strata_in(&dir, &["apply", "--auto-approve"]);
    assert!(replaced.status.success(), "{}{}", stdout(&replaced), stderr(&replaced));
    assert_eq!(std::fs::read_to_string(dir.join("log")).unwrap(), "created-1\ncreated-2\ndestroyed\n");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".strata/state.json")).unwrap()).unwrap();
    let addresses: Vec<&String> = state["resources"].as_object().unwrap().keys().collect();
    assert_eq!(addresses, vec!["lab/c/local.command/job"], "no deposed record may remain");
}

#[test]
fn a_three_digit_mode_converges() {
    let q = Quickstart::new();
    let dir = custom_stack(
        &q,
        "modes",
        "    type: object\n",
        "type: local.file\nname: f\nspec: {path: ./out/f, content: x, mode: \"640\"}\n",
        "{}",
    );
    assert!(strata_in(&dir, &["apply", "--auto-approve"]).status.success());
    let again = strata_in(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("out/f")).unwrap().permissions().mode() & 0o777, 0o640);
}
