//! Plan benchmark: a generated stack of 10,000 resources over 100 sites on the in-memory
//! provider. Prints wall times and peak memory (VmHWM).
//!
//! `cargo bench --bench plan` runs the full size; `cargo test --benches` runs a small smoke
//! version so that the benchmark keeps compiling and working.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use strata::engine;
use strata::output::NoProgress;
use strata::plan::Operation;
use strata::provider::Registry;
use strata::state::{LocalBackend, Storage};

const BLUEPRINT: &str = r#"apiVersion: strata.dev/v1alpha1
kind: Blueprint
metadata: {name: gpu-fleet, version: 1.0.0, description: generated for the benchmark}
spec:
  inputs:
    type: object
    properties:
      count: {type: integer, minimum: 1}
      gpuModel: {type: string, default: h100}
"#;

// Every tenth resource depends on the one before it, every other one refers to the first.
const TEMPLATE: &str = r#"{% for i in range(inputs.count) %}
---
type: memory.object
name: node-{{ i }}
{% if i % 10 == 9 %}dependsOn: [memory.object/node-{{ i - 1 }}]{% endif %}
spec:
  gpu: {{ inputs.gpuModel }}
  index: {{ i }}
  site: {{ site.name }}
  labels: {rack: "r{{ i // 10 }}", pool: gpu}
{% if i > 0 and i % 2 == 0 %}  head: "{{ ref('memory.object/node-0', 'id') }}"{% endif %}
{% endfor %}
"#;

fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn write_stack(dir: &Path, sites: usize, per_site: usize) {
    let bp = dir.join("blueprints/gpu-fleet/templates");
    std::fs::create_dir_all(&bp).unwrap();
    std::fs::write(dir.join("blueprints/gpu-fleet/blueprint.yaml"), BLUEPRINT).unwrap();
    std::fs::write(bp.join("nodes.yaml.j2"), TEMPLATE).unwrap();
    let mut stack =
        String::from("apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {name: bench}\nspec:\n  sites:\n");
    for s in 0..sites {
        stack.push_str(&format!(
            "    site-{s}: {{provider: memory, labels: {{fleet: gpu}}, config: {{namespace: bench-{s}}}}}\n"
        ));
    }
    stack.push_str(&format!(
        "  components:\n    - name: fleet\n      blueprint: gpu-fleet@^1\n      sites: {{matchLabels: {{fleet: gpu}}}}\n      values: {{count: {per_site}}}\n"
    ));
    std::fs::write(dir.join("stack.yaml"), stack).unwrap();
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sites, per_site) = if full { (100, 100) } else { (4, 10) };
    let dir = tempfile::tempdir().unwrap();
    write_stack(dir.path(), sites, per_site);
    let registry = Registry::builtin().with(strata_provider_sdk::testing::factory);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let started = Instant::now();
    let loaded = engine::load(&dir.path().join("stack.yaml"), &registry).unwrap_or_else(|d| panic!("{d}"));
    let load_time = started.elapsed();
    let resources = loaded.rendered.resources.len();
    assert_eq!(resources, sites * per_site);

    let (plan, plan_time) = runtime.block_on(async {
        let begun = Instant::now();
        let sites = engine::configure(&registry, "bench", &engine::connections(&loaded.stack)).await.unwrap();
        let plan = engine::plan(&loaded, None, &sites, Operation::Apply, &engine::limits(10, &sites)).await.unwrap();
        (plan, begun.elapsed())
    });
    assert_eq!(plan.counts().0.create, resources);
    let memory_after_plan = peak_memory_mib();

    let backend = Arc::new(LocalBackend::new(dir.path().join(".strata/state.json")));
    let (apply_time, converged_time) = runtime.block_on(async {
        let sites = engine::configure(&registry, "bench", &engine::connections(&loaded.stack)).await.unwrap();
        let limits = engine::limits(10, &sites);
        let begun = Instant::now();
        let (report, _) = engine::apply(&plan, None, backend.clone(), &sites, &limits, Arc::new(NoProgress)).await;
        assert!(report.success());
        let apply_time = begun.elapsed();
        let state = backend.read().unwrap();
        let begun = Instant::now();
        let again = engine::plan(&loaded, state.as_ref(), &sites, Operation::Apply, &limits).await.unwrap();
        assert!(!again.has_changes());
        (apply_time, begun.elapsed())
    });

    println!("strata plan benchmark: {resources} resources over {sites} sites (in-memory provider)");
    println!("  load + validate + render + graph: {:>8.1} ms", load_time.as_secs_f64() * 1e3);
    println!("  plan, empty state (all create):   {:>8.1} ms", plan_time.as_secs_f64() * 1e3);
    println!("  total plan wall time:             {:>8.1} ms", (load_time + plan_time).as_secs_f64() * 1e3);
    println!("  peak memory after plan (VmHWM):   {:>8.1} MiB", memory_after_plan);
    println!("  apply (state written per change): {:>8.1} ms", apply_time.as_secs_f64() * 1e3);
    println!("  plan, converged (all no-op):      {:>8.1} ms", converged_time.as_secs_f64() * 1e3);
    println!("  peak memory overall (VmHWM):      {:>8.1} MiB", peak_memory_mib());
}
