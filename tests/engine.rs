//! The engine end to end on the in-memory test provider: converging, drift, failures,
//! retries, deletion order, lifecycle rules. (The local provider, a real one, is exercised
//! through the CLI in `cli.rs`.)

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use strata::engine::{self, Loaded};
use strata::output::{self, NoProgress, Style};
use strata::plan::{Action, Operation, Plan};
use strata::provider::Registry;
use strata::state::{LocalBackend, State, Storage};
use strata::walk::Outcome;
use strata_provider_sdk::testing::{self, MemoryProvider};

const BLUEPRINT: &str = r#"apiVersion: strata.dev/v1alpha1
kind: Blueprint
metadata: {name: objects, version: 1.0.0}
spec:
  inputs:
    type: object
    properties:
      objects: {type: array}
"#;

const TEMPLATE: &str = r#"{% for o in inputs.objects %}
---
type: memory.object
name: {{ o.name }}
{% if o.dependsOn is defined %}dependsOn: {{ o.dependsOn | tojson }}{% endif %}
{% if o.lifecycle is defined %}lifecycle: {{ o.lifecycle | tojson }}{% endif %}
spec:
  value: {{ o.value | default(o.name) | tojson }}
{% if o.refersTo is defined %}  upstream: "{{ ref(o.refersTo, 'id') }}"{% endif %}
{% if o.failApply is defined %}  failApply: {{ o.failApply | tojson }}{% endif %}
{% if o.transientFailures is defined %}  transientFailures: {{ o.transientFailures }}{% endif %}
{% endfor %}
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    stack: PathBuf,
    namespace: String,
}

impl Fixture {
    fn new(namespace: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bp = dir.path().join("blueprints/objects/templates");
        std::fs::create_dir_all(&bp).unwrap();
        std::fs::write(dir.path().join("blueprints/objects/blueprint.yaml"), BLUEPRINT).unwrap();
        std::fs::write(bp.join("objects.yaml.j2"), TEMPLATE).unwrap();
        let stack = dir.path().join("stack.yaml");
        Fixture { _dir: dir, stack, namespace: namespace.to_string() }
    }

    /// Writes the stack with these objects on sites `a` and `b` (site per object: `site`).
    fn objects(&self, objects: Value) {
        let stack = json!({
            "apiVersion": "strata.dev/v1alpha1",
            "kind": "Stack",
            "metadata": {"name": "test"},
            "spec": {
                "sites": {"mem": {"provider": "memory", "config": {"namespace": self.namespace}}},
                "components": [{"name": "app", "blueprint": "objects", "site": "mem", "values": {"objects": objects}}]
            }
        });
        std::fs::write(&self.stack, serde_yaml::to_string(&stack).unwrap()).unwrap();
    }

    fn registry() -> Registry {
        Registry::builtin().with(testing::factory)
    }

    fn load(&self) -> Loaded {
        engine::load(&self.stack, &Self::registry()).unwrap_or_else(|d| panic!("{d}"))
    }

    fn backend(&self) -> LocalBackend {
        LocalBackend::new(self.stack.parent().unwrap().join(".strata/state.json"))
    }

    async fn plan(&self, operation: Operation) -> Result<Plan, strata::diagnostics::Diagnostics> {
        let loaded = self.load();
        let state = self.backend().read().unwrap();
        let sites = engine::configure(&Self::registry(), "test", &engine::connections(&loaded.stack)).await?;
        engine::plan(&loaded, state.as_ref(), &sites, operation, &engine::limits(4, &sites)).await
    }

    async fn apply(&self, operation: Operation) -> (strata::apply::Report, State) {
        let plan = self.plan(operation).await.unwrap_or_else(|d| panic!("{d}"));
        let loaded = self.load();
        let state = self.backend().read().unwrap();
        let sites = engine::configure(&Self::registry(), "test", &engine::connections(&loaded.stack)).await.unwrap();
        engine::apply(&plan, state, Arc::new(self.backend()), &sites, &engine::limits(4, &sites), Arc::new(NoProgress))
            .await
    }

    fn objects_in_memory(&self) -> Vec<String> {
        let mut names: Vec<String> = MemoryProvider::objects(&self.namespace).into_keys().collect();
        names.sort();
        names
    }
}

fn actions(plan: &Plan) -> Vec<(String, Action)> {
    plan.changes.iter().map(|c| (c.address.rsplit('/').next().unwrap().to_string(), c.action)).collect()
}

#[tokio::test]
async fn applying_twice_changes_nothing_the_second_time() {
    let f = Fixture::new("twice");
    f.objects(json!([{"name": "a"}, {"name": "b", "refersTo": "memory.object/a"}]));
    let (report, state) = f.apply(Operation::Apply).await;
    assert!(report.success(), "{}", output::report_human(&report, &Style { color: false }));
    assert_eq!(state.resources.len(), 2);
    assert_eq!(state.resources["mem/app/memory.object/b"].spec["upstream"], json!("mem/app/memory.object/a"));
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert!(!plan.has_changes(), "{}", output::plan_human(&plan, &Style { color: false }));
    assert_eq!(
        output::plan_human(&plan, &Style { color: false }),
        "No changes. The sites match the stack (2 resources up to date).\n"
    );
}

#[tokio::test]
async fn drift_behind_the_engines_back_is_planned_as_one_update() {
    let f = Fixture::new("drift");
    f.objects(json!([{"name": "a"}, {"name": "b"}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    MemoryProvider::set_object("drift", "mem/app/memory.object/a", json!({"value": "changed by hand"}));
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert_eq!(actions(&plan), vec![("a".into(), Action::Update), ("b".into(), Action::NoOp)]);
    insta::assert_snapshot!(output::plan_human(&plan, &Style { color: false }));
}

#[tokio::test]
async fn a_failed_resource_skips_its_dependents_and_the_rest_goes_on() {
    let f = Fixture::new("failure");
    f.objects(json!([
        {"name": "broken", "failApply": "quota exceeded"},
        {"name": "child", "dependsOn": ["memory.object/broken"]},
        {"name": "grandchild", "refersTo": "memory.object/child"},
        {"name": "independent"}
    ]));
    let (report, state) = f.apply(Operation::Apply).await;
    assert!(!report.success());
    let outcome = |name: &str| report.resources.iter().find(|r| r.address.ends_with(name)).unwrap().outcome.clone();
    assert_eq!(outcome("/broken"), Outcome::Failed);
    assert_eq!(outcome("/child"), Outcome::Skipped { because: "mem/app/memory.object/broken".into() });
    assert_eq!(outcome("/grandchild"), Outcome::Skipped { because: "mem/app/memory.object/broken".into() });
    assert_eq!(outcome("/independent"), Outcome::Done);
    let text = output::report_human(&report, &Style { color: false });
    assert!(text.contains("quota exceeded"), "{text}");

    // The state on disk is valid and holds exactly what was done.
    let on_disk = f.backend().read().unwrap().unwrap();
    assert_eq!(on_disk, state);
    assert_eq!(on_disk.resources.keys().collect::<Vec<_>>(), vec!["mem/app/memory.object/independent"]);
    assert!(on_disk.intents.is_empty());

    // Fix the cause: the next apply converges, and the one after changes nothing.
    f.objects(json!([
        {"name": "broken"},
        {"name": "child", "dependsOn": ["memory.object/broken"]},
        {"name": "grandchild", "refersTo": "memory.object/child"},
        {"name": "independent"}
    ]));
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert_eq!(plan.counts().0.create, 3);
    assert!(f.apply(Operation::Apply).await.0.success());
    assert!(!f.plan(Operation::Apply).await.unwrap().has_changes());
    assert_eq!(f.objects_in_memory().len(), 4);
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let f = Fixture::new("transient");
    f.objects(json!([{"name": "flaky", "transientFailures": 2}]));
    let (report, _) = f.apply(Operation::Apply).await;
    assert!(report.success(), "{:?}", report.resources);
    assert_eq!(f.objects_in_memory(), vec!["mem/app/memory.object/flaky"]);
}

#[tokio::test]
async fn destroy_goes_in_reverse_dependency_order() {
    let f = Fixture::new("destroy");
    f.objects(json!([
        {"name": "base"},
        {"name": "middle", "refersTo": "memory.object/base"},
        {"name": "top", "dependsOn": ["memory.object/middle"]}
    ]));
    assert!(f.apply(Operation::Apply).await.0.success());
    let plan = f.plan(Operation::Destroy).await.unwrap();
    assert!(plan.changes.iter().all(|c| c.action == Action::Delete));
    let (report, state) = f.apply(Operation::Destroy).await;
    assert!(report.success());
    assert!(state.resources.is_empty());
    assert!(f.objects_in_memory().is_empty());
    let deletes: Vec<String> =
        MemoryProvider::events("destroy").into_iter().filter(|e| e.starts_with("delete")).collect();
    assert_eq!(
        deletes,
        vec![
            "delete mem/app/memory.object/top",
            "delete mem/app/memory.object/middle",
            "delete mem/app/memory.object/base"
        ]
    );
}

#[tokio::test]
async fn removed_resources_are_deleted_after_their_dependents_change() {
    let f = Fixture::new("removal");
    f.objects(json!([{"name": "old"}, {"name": "user", "refersTo": "memory.object/old"}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    f.objects(json!([{"name": "user", "value": "standalone"}]));
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert_eq!(actions(&plan), vec![("old".into(), Action::Delete), ("user".into(), Action::Update)]);
    assert!(f.apply(Operation::Apply).await.0.success());
    let events = MemoryProvider::events("removal");
    let update = events.iter().rposition(|e| e == "apply mem/app/memory.object/user").unwrap();
    let delete = events.iter().position(|e| e == "delete mem/app/memory.object/old").unwrap();
    assert!(update < delete, "{events:?}");
}

#[tokio::test]
async fn prevent_destroy_refuses_the_plan() {
    let f = Fixture::new("prevent");
    f.objects(json!([{"name": "precious", "lifecycle": {"preventDestroy": true}}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    let err = f.plan(Operation::Destroy).await.unwrap_err();
    let text = err.render(false);
    assert!(text.contains("`mem/app/memory.object/precious` has `lifecycle.preventDestroy` set"), "{text}");
    f.objects(json!([]));
    assert!(f.plan(Operation::Apply).await.is_err());
    assert_eq!(f.objects_in_memory(), vec!["mem/app/memory.object/precious"]);
}

#[tokio::test]
async fn a_saved_plan_is_refused_once_the_state_moved() {
    let f = Fixture::new("stale");
    f.objects(json!([{"name": "a"}]));
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert!(engine::check_plan_is_current(&plan, None).is_ok());
    assert!(f.apply(Operation::Apply).await.0.success());
    let state = f.backend().read().unwrap();
    let err = engine::check_plan_is_current(&plan, state.as_ref()).unwrap_err();
    assert!(err.summary.contains("lineage"), "{err}");
    f.objects(json!([{"name": "a", "value": 2}]));
    let plan = f.plan(Operation::Apply).await.unwrap();
    f.objects(json!([{"name": "a", "value": 3}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    let err = engine::check_plan_is_current(&plan, f.backend().read().unwrap().as_ref()).unwrap_err();
    assert!(err.summary.contains("state changed since the plan was made"), "{err}");
}

#[tokio::test]
async fn an_interrupted_create_is_adopted_not_made_twice() {
    let f = Fixture::new("adopt");
    f.objects(json!([{"name": "a"}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    // As if the process died after the provider made `a` and before the state recorded it.
    let mut state = f.backend().read().unwrap().unwrap();
    let record = state.resources.remove("mem/app/memory.object/a").unwrap();
    state.intents.insert(
        "mem/app/memory.object/a".into(),
        strata::state::Intent { action: "create".into(), since: "2026-12-04T00:00:00Z".into() },
    );
    f.backend().write(&state).unwrap();

    let plan = f.plan(Operation::Apply).await.unwrap();
    assert!(!plan.has_changes());
    assert_eq!(plan.record_refreshes(), 1);
    assert!(plan.warnings[0].contains("was interrupted"), "{:?}", plan.warnings);
    let (report, state) = f.apply(Operation::Apply).await;
    assert!(report.success());
    assert!(state.intents.is_empty());
    assert_eq!(state.resources["mem/app/memory.object/a"].id, record.id);
    let events = MemoryProvider::events("adopt");
    assert_eq!(events.iter().filter(|e| *e == "apply mem/app/memory.object/a").count(), 1, "{events:?}");
    assert_eq!(f.plan(Operation::Apply).await.unwrap().record_refreshes(), 0);
}

#[tokio::test]
async fn removing_prevent_destroy_from_the_template_takes_effect() {
    let f = Fixture::new("unprevent");
    f.objects(json!([{"name": "precious", "lifecycle": {"preventDestroy": true}}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    assert!(f.plan(Operation::Destroy).await.is_err());
    f.objects(json!([{"name": "precious"}]));
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert!(!plan.has_changes());
    assert_eq!(plan.record_refreshes(), 1);
    assert!(f.apply(Operation::Apply).await.0.success());
    let (report, state) = f.apply(Operation::Destroy).await;
    assert!(report.success());
    assert!(state.resources.is_empty());
}

#[tokio::test]
async fn a_blueprint_upgrade_outside_upgrade_from_is_refused() {
    let f = Fixture::new("upgrade");
    f.objects(json!([{"name": "a"}]));
    assert!(f.apply(Operation::Apply).await.0.success());
    let root = f.stack.parent().unwrap();
    let v2 = root.join("blueprints/objects-2/templates");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(
        root.join("blueprints/objects-2/blueprint.yaml"),
        BLUEPRINT
            .replace("version: 1.0.0", "version: 2.0.0")
            .replace("spec:\n", "spec:\n  upgradeFrom: [\">=1.5.0, <2.0.0\"]\n"),
    )
    .unwrap();
    std::fs::write(v2.join("objects.yaml.j2"), TEMPLATE).unwrap();
    let err = f.plan(Operation::Apply).await.unwrap_err().render(false);
    assert!(err.contains("objects@1.0.0 → objects@2.0.0 is not an upgrade this version allows in place"), "{err}");
    assert!(err.contains(">=1.5.0, <2.0.0"), "{err}");
    // Allowing 1.x makes it an in-place upgrade, recorded with the new version.
    std::fs::write(
        root.join("blueprints/objects-2/blueprint.yaml"),
        BLUEPRINT.replace("version: 1.0.0", "version: 2.0.0").replace("spec:\n", "spec:\n  upgradeFrom: [\"^1\"]\n"),
    )
    .unwrap();
    let plan = f.plan(Operation::Apply).await.unwrap();
    assert_eq!(plan.record_refreshes(), 1);
    let (_, state) = f.apply(Operation::Apply).await;
    assert_eq!(state.resources["mem/app/memory.object/a"].blueprint, "objects@2.0.0");
}
