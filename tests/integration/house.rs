//! The house rules docs/ARCHITECTURE.md writes down, checked against the code: modules import only
//! from layers below their own, and the file map lists exactly the files that exist.
//!
//! The layer list and the file map live in ARCHITECTURE.md alone; these tests read them from there,
//! so the page cannot drift from the code without failing CI.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md")
}

/// The text between `<!-- {name} -->` and `<!-- /{name} -->`.
fn marked<'a>(page: &'a str, name: &str) -> &'a str {
    let open = format!("<!-- {name} -->");
    let close = format!("<!-- /{name} -->");
    let start = page
        .find(&open)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no {open}"));
    let end = page[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no {close}"));
    &page[start + open.len()..start + end]
}

/// The backquoted names on a line.
fn quoted(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// The layers, top first: each numbered item of the block names its modules in backquotes before its
/// colon; an item saying "never imports" names, before its colon, a module and modules it must not
/// name even though they are below it.
struct Rules {
    layer_of: BTreeMap<String, usize>,
    forbidden: Vec<(String, Vec<String>)>,
}

fn rules() -> Rules {
    let page = architecture();
    let block = marked(&page, "layers");
    let mut layer_of = BTreeMap::new();
    let mut forbidden = Vec::new();
    let mut layer = 0;
    for line in block.lines().map(str::trim) {
        let Some(item) = line.strip_prefix("- ").or_else(|| {
            line.split_once(". ")
                .filter(|(n, _)| n.parse::<u32>().is_ok())
                .map(|(_, rest)| rest)
        }) else {
            continue;
        };
        let head = item.split(':').next().unwrap_or(item);
        if head.contains("never imports") {
            let names = quoted(head);
            let (module, rest) = names.split_first().expect("a module that never imports");
            forbidden.push((
                (*module).to_owned(),
                rest.iter().map(|s| (*s).to_owned()).collect(),
            ));
            continue;
        }
        for name in quoted(head) {
            let name = name.trim_end_matches(".rs").trim_end_matches('/');
            assert!(
                layer_of.insert(name.to_owned(), layer).is_none(),
                "{name} is in two layers"
            );
        }
        layer += 1;
    }
    assert!(layer >= 3, "the layers block lists too few layers: {block}");
    Rules {
        layer_of,
        forbidden,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (line comments, and doc comments, which may name any module).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string (a URL) keeps the line: strings do not name modules as paths.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file's code names through `crate::`: `crate::x::…`, `crate::x` and the
/// items of `crate::{x, y::…}` groups (macros at the crate root, `crate::m!`, are not modules).
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.extend(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            named.extend(first_segment(&item));
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() && !rest[ident.len()..].starts_with('!') {
                named.insert(ident);
            }
        }
    }
    named
}

fn first_segment(item: &str) -> Option<String> {
    let ident: String = item
        .trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// The top-level module a file under `src/` belongs to (`lib` and `main` for the roots).
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn modules_import_only_from_layers_below_their_own() {
    let rules = rules();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src").to_path_buf();
        let module = module_of(&relative);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&layer) = rules.layer_of.get(&module) else {
            upward.push(format!(
                "{}: module `{module}` is in no layer of ARCHITECTURE.md",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for target in named_modules(&code(&text)) {
            if target == module {
                continue;
            }
            match rules.layer_of.get(&target) {
                Some(&below) if below > layer => {}
                Some(_) => upward.push(format!(
                    "{}: `{module}` imports `{target}`, which is not in a lower layer",
                    relative.display()
                )),
                None => upward.push(format!(
                    "{}: `{module}` imports `{target}`, which is in no layer",
                    relative.display()
                )),
            }
            for (from, not) in &rules.forbidden {
                if *from == module && not.contains(&target) {
                    upward.push(format!(
                        "{}: `{module}` never imports `{target}` (ARCHITECTURE.md)",
                        relative.display()
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "layer rule broken:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_groups_paths_and_skips_macros_and_comments() {
    let text = "use crate::{a::B, b, c::{d, e}};\n\
                // crate::commented\n\
                let x = crate::f::g();\n\
                crate::mac!();\n\
                use crate::{self as h};";
    let named: Vec<String> = named_modules(&code(text)).into_iter().collect();
    assert_eq!(named, ["a", "b", "c", "f"]);
}

/// Every Rust file of the workspace, relative to its root: the service, the bench, the tests.
fn workspace_files() -> BTreeSet<String> {
    let root = root();
    let mut files = Vec::new();
    for dir in ["src", "follow-bench/src", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    files
        .iter()
        .filter_map(|f| f.strip_prefix(&root).ok())
        .map(|f| f.to_string_lossy().replace('\\', "/"))
        .collect()
}

#[test]
fn the_file_map_lists_exactly_the_files_that_exist() {
    let page = architecture();
    let listed: BTreeSet<String> = marked(&page, "files")
        .lines()
        .flat_map(quoted)
        .filter(|name| name.ends_with(".rs"))
        .map(str::to_owned)
        .collect();
    let existing = workspace_files();
    let missing: Vec<&String> = existing.difference(&listed).collect();
    let gone: Vec<&String> = listed.difference(&existing).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "ARCHITECTURE.md's file map is out of date.\nnot listed: {missing:?}\nlisted but absent: {gone:?}"
    );
}
