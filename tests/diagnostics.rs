//! Every error a user can cause names the file, line and field: one fixture folder per
//! case under `tests/fixtures/errors/`, its diagnostics snapshotted.

use strata::engine;
use strata::provider::Registry;

#[test]
fn errors_name_file_line_and_field() {
    insta::glob!("fixtures/errors/*/stack.yaml", |path| {
        let root = path.parent().unwrap().parent().unwrap();
        let diags = match engine::load(path, &Registry::builtin()) {
            Ok(_) => panic!("{} loaded without an error", path.display()),
            Err(d) => d,
        };
        assert!(diags.has_errors());
        for d in &diags.0 {
            let loc = d.location.as_ref().unwrap_or_else(|| panic!("no location: {d}"));
            assert!(!loc.file.is_empty());
            assert!(loc.line > 0, "no line: {d}");
        }
        let text = diags.render(false).replace(&format!("{}/", root.display()), "");
        insta::assert_snapshot!(text);
    });
}
