//! The README's library example is the crate's doctest (`doc/library.md`, included in the crate
//! docs, so `cargo test --doc` compiles it): the README must quote it verbatim.

#[test]
fn readme_quotes_the_library_doctest_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let snippet = std::fs::read_to_string(root.join("doc/library.md")).unwrap();
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    assert!(snippet.starts_with("```rust"), "{snippet}");
    assert!(
        readme.contains(&format!("## The library in a few lines\n\n{snippet}")),
        "README.md no longer quotes crates/virtfw/doc/library.md under its library heading"
    );
}
