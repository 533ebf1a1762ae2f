//! The chart's committed CRDs equal what the code generates.
//!
//! Regenerate after changing the types: `TRELLIS_UPDATE_CRDS=1 cargo test -p trellis-operator --test crds`.

use std::path::PathBuf;

fn chart_crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/trellis/crds")
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = chart_crds_dir();
    let update = std::env::var_os("TRELLIS_UPDATE_CRDS").is_some();
    let mut expected_files = Vec::new();
    for crd in trellis_crd::crds() {
        let file = trellis_operator::crd_file_name(&crd);
        let generated = trellis_operator::crd_yaml(&crd).unwrap();
        let path = dir.join(&file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with TRELLIS_UPDATE_CRDS=1",
                path.display()
            )
        });
        assert!(
            committed == generated,
            "{file} is stale; regenerate with TRELLIS_UPDATE_CRDS=1 cargo test -p trellis-operator --test crds"
        );
        expected_files.push(file);
    }
    // No stale CRD left behind for a resource that no longer exists.
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files);
}

#[test]
fn crd_subcommand_prints_every_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, trellis_operator::crds_yaml().unwrap());
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["kind"].as_str(), Some("CustomResourceDefinition"));
}
