//! The crate's structure, checked: no cycles between its top-level modules.
//!
//! A cycle (the engine calling the batch path that calls the engine back, say) ties modules
//! together so that neither can be read, tested or replaced alone. This test reads the crate's
//! own source, collects the `crate::module` paths each top-level module's non-test code uses
//! (items re-exported at the crate root count for the module that defines them) and fails on a
//! cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges between top-level modules: module → the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line, without its `//` comment (doc links are not dependencies). Good enough
/// for this crate's sources: no string literal in them holds `crate::`.
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

/// The identifiers `text` names right after `crate::`, including each first name inside a
/// `crate::{a, b::c}` list.
fn crate_paths(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(list) = after.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            names.extend(
                list[..end]
                    .split(',')
                    .map(|item| ident(item.trim()))
                    .filter(|n| !n.is_empty()),
            );
        } else {
            names.push(ident(after));
        }
        rest = after;
    }
    names
}

/// Which top-level module each name re-exported at the crate root comes from
/// (`pub use engine::{Applied, …}` → `Applied` is `engine`).
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let mut exports = BTreeMap::new();
    let text: String = lib.lines().map(code).collect::<Vec<_>>().join(" ");
    for stmt in text.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                exports.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    exports
}

/// The lines of `text` before its inline test module (`#[cfg(test)]` then `mod … {`): tests
/// may drive the whole engine, which is no dependency of the module they test.
fn non_test_lines(text: &str) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| {
            w[0].trim() == "#[cfg(test)]"
                && w[1].trim_start().starts_with("mod ")
                && w[1].trim_end().ends_with('{')
        })
        .unwrap_or(lines.len());
    lines.into_iter().take(end)
}

/// The module graph of the source tree at `src` (test code left out, see [`non_test_lines`]).
fn graph(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let exports = root_exports(&lib);
    let mut files = Vec::new();
    sources(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src).ok()?;
            let first = rel.components().next()?.as_os_str().to_str()?;
            (first != "lib.rs").then(|| first.trim_end_matches(".rs").to_string())
        })
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().and_then(|c| c.as_os_str().to_str());
        let Some(from) = first.map(|f| f.trim_end_matches(".rs").to_string()) else {
            continue;
        };
        if from == "lib" {
            continue;
        }
        let stem = file.file_stem().and_then(|s| s.to_str());
        if matches!(stem, Some("tests" | "test_support" | "structure")) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        let edges = graph.entry(from.clone()).or_default();
        for line in non_test_lines(&text) {
            for name in crate_paths(code(line)) {
                let to = if modules.contains(&name) {
                    Some(name)
                } else {
                    exports.get(&name).cloned()
                };
                if let Some(to) = to.filter(|to| *to != from) {
                    edges.insert(to);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it (first repeated at the end), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    // The scan sees the known edges (so an empty graph cannot pass by accident).
    assert!(graph["engine"].contains("batch"), "{graph:?}");
    assert!(graph["batch"].contains("run"), "{graph:?}");
    assert!(graph["engine"].contains("run"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}\n{graph:#?}", cycle.join(" -> "));
    }
}

#[test]
fn cycles_are_found_and_named() {
    let mut graph = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
    };
    edge(&mut graph, "engine", "run");
    edge(&mut graph, "batch", "run");
    edge(&mut graph, "engine", "batch");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "run", "engine");
    let cycle = find_cycle(&graph).expect("engine -> run -> engine");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"run".to_string()) && cycle.contains(&"engine".to_string()));
}

#[test]
fn paths_and_root_exports_are_read() {
    assert_eq!(
        crate_paths("use crate::{error::Error, model::Layer}; crate::nft::words(x)"),
        ["error", "model", "nft"]
    );
    let exports =
        root_exports("pub use engine::{Applied, ApplyOptions};\npub use xtables as rollback;");
    assert_eq!(
        exports.get("ApplyOptions").map(String::as_str),
        Some("engine")
    );
}
