//! The map in ARCHITECTURE.md, checked: each subsystem of this crate may
//! use only the ones below it. Every path in the sources that names a
//! module of the crate is found, written as a `use` or inline
//! (`crate::x::y`, `super::super::x`, resolved from the file's place), and
//! refused if its subsystem must not depend on that one. (The Raft core is
//! a crate of its own with no actix, tokio or I/O crate in its Cargo.toml:
//! that rule the compiler checks.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each subsystem (a top-level module of the crate) and the ones it must
/// not use, with why.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "wal",
        &["kv", "replica", "cluster", "storage"],
        "the WAL is the bottom layer",
    ),
    (
        "storage",
        &["kv", "replica", "cluster", "wal", "disk"],
        "pages and trees know nothing of what is stored in them",
    ),
    (
        "kv",
        &["replica", "cluster", "wal"],
        "the state machine is driven; it reaches no driver",
    ),
    (
        "cluster",
        &["replica", "kv", "storage", "wal", "disk"],
        "the transport carries messages; the replica reaches it through a Recipient",
    ),
    (
        "disk",
        &["replica", "kv", "cluster", "storage", "wal", "observe"],
        "the disk monitor is a leaf",
    ),
    (
        "observe",
        &["replica", "kv", "cluster", "storage", "wal", "disk"],
        "every actor uses it",
    ),
];

/// Files of a subsystem allowed actix, where the rest of it may not use it.
const ACTIX_ALLOWED_IN_STORAGE: &str = "storage/manager.rs";

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The module path of a file relative to `src/` (`kv/state.rs` is
/// `["kv", "state"]`, `kv/mod.rs` is `["kv"]`, `lib.rs` is `[]`).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments (line, doc and block comments) and
/// without the insides of string and char literals (raw strings too), so
/// neither a link in the docs nor a path in a message is taken for an import.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        match (c, next) {
            ('/', Some('/')) => {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            }
            ('/', Some('*')) => {
                at += 2;
                while at + 1 < chars.len() && !(chars[at] == '*' && chars[at + 1] == '/') {
                    at += 1;
                }
                at += 2;
            }
            // A raw string: r"...", r#"..."#, with as many #s as it opened with.
            ('r', Some('"' | '#'))
                if at == 0 || !(chars[at - 1].is_alphanumeric() || chars[at - 1] == '_') =>
            {
                let mut hashes = 0;
                at += 1;
                while chars.get(at) == Some(&'#') {
                    hashes += 1;
                    at += 1;
                }
                if chars.get(at) != Some(&'"') {
                    continue;
                }
                at += 1;
                loop {
                    if at >= chars.len() {
                        break;
                    }
                    if chars[at] == '"' && (1..=hashes).all(|k| chars.get(at + k) == Some(&'#')) {
                        at += 1 + hashes;
                        break;
                    }
                    at += 1;
                }
                code.push_str("\"\"");
            }
            ('"', _) => {
                at += 1;
                while at < chars.len() && chars[at] != '"' {
                    if chars[at] == '\\' {
                        at += 1;
                    }
                    at += 1;
                }
                at += 1;
                code.push_str("\"\"");
            }
            // A char literal ('"', '\'', 'x'); a lifetime ('a) has no closing quote.
            ('\'', Some(_)) => {
                let close = if next == Some('\\') { at + 3 } else { at + 2 };
                if chars.get(close) == Some(&'\'') {
                    code.push_str("' '");
                    at = close + 1;
                } else {
                    code.push(c);
                    at += 1;
                }
            }
            _ => {
                code.push(c);
                at += 1;
            }
        }
    }
    code
}

/// The top-level modules of the crate that the paths in `code` reach, for
/// a file whose module path is `module`: `crate::x`, and `super::` chains
/// resolved against the file's place.
fn reached(code: &str, module: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    while at < bytes.len() {
        // A path starts where an identifier does.
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b':') {
            at += 1;
            continue;
        }
        let rest = &code[at..];
        let (ups, tail) = if let Some(tail) = rest.strip_prefix("crate::") {
            (None, tail)
        } else if rest.starts_with("super::") {
            let mut ups = 0;
            let mut tail = rest;
            while let Some(next) = tail.strip_prefix("super::") {
                ups += 1;
                tail = next;
            }
            (Some(ups), tail)
        } else {
            at += 1;
            continue;
        };
        let first: String = tail
            .bytes()
            .take_while(|b| is_ident(*b))
            .map(char::from)
            .collect();
        let top = match ups {
            None => Some(first),
            // `super::` from `a::b` is `a`; reaching the root, the next
            // segment is the top-level module.
            Some(ups) if ups >= module.len() => Some(first),
            Some(ups) => module
                .get(..module.len() - ups)
                .and_then(|m| m.first().cloned()),
        };
        if let Some(top) = top.filter(|t| !t.is_empty()) {
            found.insert(top);
        }
        at += 1;
    }
    found
}

#[test]
fn no_subsystem_uses_one_it_must_not() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = module_of(relative);
        let Some(subsystem) = module.first() else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let code = code_of(&text);
        if let Some((_, forbidden, why)) = RULES.iter().find(|(name, _, _)| name == subsystem) {
            for top in reached(&code, &module) {
                if forbidden.contains(&top.as_str()) {
                    violations.push(format!(
                        "{}: uses `{top}`, which `{subsystem}` must not ({why})",
                        relative.display()
                    ));
                }
            }
        }
        let actix_free = matches!(subsystem.as_str(), "storage" | "disk")
            && relative != Path::new(ACTIX_ALLOWED_IN_STORAGE);
        if actix_free && code.contains("actix") {
            violations.push(format!(
                "{}: uses actix, which only {ACTIX_ALLOWED_IN_STORAGE} of the storage may",
                relative.display()
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "imports ARCHITECTURE.md forbids:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_checker_finds_use_and_inline_paths_and_resolves_super() {
    let module = vec!["kv".to_string(), "state".to_string()];
    let code = code_of(
        "use crate::replica::RaftReplica;\n\
         // crate::cluster in a comment is no import\n\
         fn f() { let _ = super::super::wal::Wal::open; let _ = super::KvError::NotFound; }\n\
         let s = \"crate::disk in a string\";",
    );
    let found = reached(&code, &module);
    assert!(found.contains("replica"), "{found:?}");
    assert!(found.contains("wal"), "{found:?}");
    assert!(
        found.contains("kv"),
        "super:: from kv::state is kv: {found:?}"
    );
    assert!(!found.contains("cluster"), "{found:?}");
    assert!(!found.contains("disk"), "{found:?}");
    assert_eq!(module_of(Path::new("kv/mod.rs")), vec!["kv".to_string()]);
}
