//! The WIT contract's versioning rules: released versions are frozen, and the
//! host supports exactly the versions that have a frozen directory, for
//! connectors (`wit/since_vX`) and scripts (`wit/script/since_vX`).

use std::path::Path;

use sha2::{Digest, Sha256};

/// Same algorithm as `scripts/wit-hash.sh`.
fn hash_dir(dir: &Path) -> String {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "wit") {
                files.push(format!("./{}", path.strip_prefix(dir).unwrap().display()));
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(format!("{f}\n"));
        hasher.update(std::fs::read(dir.join(&f)).unwrap());
    }
    hex::encode(hasher.finalize())
}

#[test]
fn contract_versions_are_frozen() {
    let wit = haven_tests::repo_root().join("wit");
    let released = std::fs::read_to_string(wit.join("released.sha256")).unwrap();
    let (mut versions, mut script_versions) = (Vec::new(), Vec::new());
    for line in released.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, dir) = line.split_once("  ").expect("`<sha256>  <dir>` lines");
        assert_eq!(
            hash_dir(&wit.join(dir)),
            hash,
            "wit/{dir} was released and must not change; put changes in a new version (see wit/README.md)"
        );
        match dir.strip_prefix("script/since_v") {
            Some(version) => script_versions.push(version.to_owned()),
            None => versions.push(dir.trim_start_matches("since_v").to_owned()),
        }
    }
    let supported: Vec<String> = haven_plugin_runtime::manifest::SUPPORTED_WIT
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(
        supported, versions,
        "every supported version has a frozen directory, and only those"
    );
    let supported: Vec<String> = haven_plugin_runtime::manifest::SUPPORTED_SCRIPT_WIT
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(
        supported, script_versions,
        "every supported script version has a frozen directory, and only those"
    );
}

/// `haven:host@0.1.0` is one package: the copy the script contract carries
/// (a WIT package needs its dependencies beside it) is the connector's, byte
/// for byte.
#[test]
fn the_script_contract_imports_the_same_host_package() {
    let wit = haven_tests::repo_root().join("wit");
    let host = "deps/host/host.wit";
    assert_eq!(
        std::fs::read_to_string(wit.join("script/since_v0.1.0").join(host)).unwrap(),
        std::fs::read_to_string(wit.join("since_v0.1.0").join(host)).unwrap(),
    );
}
