//! Shared by the integration tests: where libvirt's conformance data lives.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

const SUBDIR: &str = "shared/conformance/libvirt-networkxml2firewall";

/// `VIRTFW_CONFORMANCE_DIR`, or `shared/conformance/...` in an ancestor of the crate. A missing
/// directory fails the test: the suite must never pass by finding nothing to check.
pub fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRTFW_CONFORMANCE_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "VIRTFW_CONFORMANCE_DIR={} is not a directory",
            dir.display()
        );
        return dir;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for ancestor in manifest.ancestors() {
        let candidate = ancestor.join(SUBDIR);
        if candidate.join("base.nftables").is_file() {
            return candidate;
        }
    }
    panic!(
        "conformance data not found: set VIRTFW_CONFORMANCE_DIR or put {SUBDIR} in an ancestor of {}",
        manifest.display()
    );
}

/// A file of the suite: top level, else `derived/`.
pub fn suite_file(name: &str) -> (PathBuf, String) {
    let dir = conformance_dir();
    for path in [dir.join(name), dir.join("derived").join(name)] {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return (path, text);
        }
    }
    panic!("{name} is in neither {} nor its derived/", dir.display());
}

/// The names of all cases (XML files, top level and `derived/`), sorted.
pub fn case_names() -> Vec<String> {
    let dir = conformance_dir();
    let mut names = Vec::new();
    for d in [dir.clone(), dir.join("derived")] {
        for entry in std::fs::read_dir(&d).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(case) = name.strip_suffix(".xml") {
                names.push(case.to_string());
            }
        }
    }
    names.sort();
    names
}
