//! What blueprints render to: one fixture folder per case under `tests/fixtures/render/`.

use strata::engine;
use strata::output;
use strata::provider::Registry;

#[test]
fn renders() {
    insta::glob!("fixtures/render/*/stack.yaml", |path| {
        let loaded = engine::load(path, &Registry::builtin()).unwrap_or_else(|d| panic!("{d}"));
        let mut text = output::render_yaml(&loaded.rendered);
        text.push_str("--- # component outputs\n");
        for instance in &loaded.rendered.instances {
            text.push_str(&format!("{}/{}: {}\n", instance.site, instance.component, instance.outputs));
        }
        text.push_str("--- # graph\n");
        text.push_str(&loaded.graph.to_dot());
        insta::assert_snapshot!(text);
    });
}

#[test]
fn quickstart_renders() {
    let loaded = engine::load(std::path::Path::new("examples/quickstart/stack.yaml"), &Registry::builtin())
        .unwrap_or_else(|d| panic!("{d}"));
    insta::assert_snapshot!(output::render_yaml(&loaded.rendered));
}

#[test]
fn sensitive_inputs_never_show() {
    let loaded = engine::load(std::path::Path::new("tests/fixtures/render/sensitive/stack.yaml"), &Registry::builtin())
        .unwrap_or_else(|d| panic!("{d}"));
    let text = output::render_yaml(&loaded.rendered);
    assert!(!text.contains("s3cr3t"), "{text}");
    assert_eq!(loaded.rendered.resources["lab/wrapped.inner/local.file/vault"].sensitive, vec!["/content".to_string()]);
    assert!(text.contains("(sensitive)"), "{text}");
}
