//! The shape of `src/`, checked rather than eyed: no two modules depend on each other, directly
//! or around a longer loop, and no file grows past the size a reader can hold.
//!
//! A module is one file (`a/b.rs`, or `a/b/mod.rs` for `a::b`). Module A depends on B when A
//! names a path into B (`crate::b::…`, `super::…`, a name a `use` bound, a declared child), in a
//! `use` or inline, tests included. Dependencies are compared between siblings: `stages::train`
//! using `nn::unet_step` makes `stages` depend on `nn`, and `stages::train` using
//! `stages::export` makes `stages::train` depend on `stages::export`; a module and its own
//! descendants count as one unit. No sibling may depend on itself around a loop, at any level.
//! `cargo test --release --test architecture -- --nocapture` prints the loops, if any, and the
//! largest files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files allowed past [`MAX_LINES`], each one cohesive thing (docs/ARCHITECTURE.md).
const LARGE_BUT_COHESIVE: &[(&str, &str)] = &[
    (
        "nn/unet_step.rs",
        "one network's training pass: each backward step beside the forward step it inverts",
    ),
    (
        "nn/conv3x3.rs",
        "one operation: forward, input and weight gradients, and their AVX-512 kernels",
    ),
    (
        "nn/ops.rs",
        "the fused CPU kernels with gradients, one op each",
    ),
    ("nn/layers.rs", "the transformer building blocks"),
    ("nn/mae.rs", "one model: masking, encoder, decoder, loss"),
    ("io/tiff.rs", "one file format, read and written"),
    (
        "pixel/forest.rs",
        "one random forest: binning, training, prediction, serialisation",
    ),
];

const MAX_LINES: usize = 450;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `src/lib.rs` and `src/main.rs` → their name.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// Source without comments and string literals, so that prose never reads as a path.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // a char literal such as '"' or '\n' (lifetimes have no closing quote)
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = end.max(i + 3);
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// One `use` tree expanded into (path, name it binds): `a::{b, c::d as e, f::{self}}` gives
/// (`a::b`, `b`), (`a::c::d`, `e`), (`a::f`, `f`); a glob binds nothing (name `*`).
fn expand_use(tree: &str, prefix: &str, out: &mut Vec<(String, String)>) {
    let tree = tree.trim();
    let join = |head: &str| {
        if prefix.is_empty() {
            head.to_string()
        } else if head.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}::{head}")
        }
    };
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        let mut items = Vec::new();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[start..]);
        for item in items.into_iter().filter(|i| !i.trim().is_empty()) {
            expand_use(item, &join(head), out);
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), Some(a.trim())),
        None => (tree, None),
    };
    if path == "self" {
        let name = prefix.rsplit("::").next().unwrap_or("").to_string();
        out.push((prefix.to_string(), alias.map_or(name, String::from)));
    } else {
        let name = path.rsplit("::").next().unwrap_or("").to_string();
        out.push((join(path), alias.map_or(name, String::from)));
    }
}

/// Every path into this crate that the code names, as segments from the crate root: `use`
/// trees, and inline paths whose first segment is `crate`, `super`, `self`, a name a `use`
/// bound, or a child module this file declares.
fn paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    // `use` statements (including `pub use`), up to their `;`.
    let mut uses = Vec::new();
    let mut rest = code;
    let mut body = String::new();
    while let Some(at) = rest.find("use ") {
        let word_start = at == 0 || !is_path_char(rest[..at].chars().last().unwrap());
        if !word_start {
            body.push_str(&rest[..at + 4]);
            rest = &rest[at + 4..];
            continue;
        }
        body.push_str(&rest[..at]);
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        expand_use(&rest[at + 4..end], "", &mut uses);
        rest = &rest[(end + 1).min(rest.len())..];
    }
    body.push_str(rest);
    let children: BTreeSet<String> = code
        .split(';')
        .filter_map(|s| {
            let s = s.trim();
            let s = s.rsplit(['}', '{', ']']).next().unwrap_or(s).trim();
            let s = s.strip_prefix("pub ").unwrap_or(s);
            let s = s.strip_prefix("pub(crate) ").unwrap_or(s);
            s.strip_prefix("mod ").map(|n| n.trim().to_string())
        })
        .collect();
    let resolve = |p: &str, aliases: &BTreeMap<String, Vec<String>>| -> Option<Vec<String>> {
        let mut parts = p.split("::").filter(|s| !s.is_empty()).peekable();
        let first = parts.next()?;
        let mut segs: Vec<String> = match first {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => {
                let mut s = module.to_vec();
                s.pop();
                while parts.peek() == Some(&"super") {
                    parts.next();
                    s.pop();
                }
                s
            }
            name if aliases.contains_key(name) => aliases[name].clone(),
            name if children.contains(name) => {
                let mut s = module.to_vec();
                s.push(name.to_string());
                s
            }
            _ => return None,
        };
        segs.extend(parts.map(String::from));
        Some(segs)
    };
    let mut out = Vec::new();
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, name) in &uses {
        if let Some(segs) = resolve(path.trim_end_matches("::*"), &aliases) {
            if name != "*" {
                aliases.insert(name.clone(), segs.clone());
            }
            out.push(segs);
        }
    }
    let chars: Vec<(usize, char)> = body.char_indices().collect();
    for (n, &(i, c)) in chars.iter().enumerate() {
        let starts_word = n == 0 || !is_path_char(chars[n - 1].1);
        if !starts_word || !(c.is_ascii_alphabetic() || c == '_') {
            continue;
        }
        let word: String = body[i..].chars().take_while(|&c| is_path_char(c)).collect();
        if word.contains("::") {
            if let Some(segs) = resolve(word.trim_end_matches(':'), &aliases) {
                out.push(segs);
            }
        }
    }
    out
}

/// The module a path lands in: its longest prefix that is a module.
fn target(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
    lines: BTreeMap<String, (usize, String)>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        let name = m.join("::");
        let text = std::fs::read_to_string(f).unwrap();
        lines.insert(
            name.clone(),
            (
                text.lines().count(),
                f.strip_prefix(&src).unwrap().display().to_string(),
            ),
        );
        let deps: BTreeSet<String> = paths_in(&code_only(&text), &m)
            .iter()
            .filter_map(|p| target(p, &modules))
            .filter_map(|t| lift(&m, &t))
            .map(|(a, b)| format!("{a}\t{b}"))
            .collect();
        for d in deps {
            let (a, b) = d.split_once('\t').unwrap();
            edges
                .entry(a.to_string())
                .or_insert_with(BTreeSet::new)
                .insert(b.to_string());
            edges.entry(b.to_string()).or_insert_with(BTreeSet::new);
        }
    }
    Graph { edges, lines }
}

/// A dependency of module `a` on module `b`, seen where it matters: between the two children
/// of their deepest common ancestor that contain them (`stages::train` → `nn::unet_step` is
/// `stages` → `nn`; `stages::train` → `stages::export` stays as it is). A module and its own
/// descendants are one unit (a parent re-exporting its children, a child using its parent's
/// shared items), so such a dependency is not lifted at all.
fn lift(a: &[String], b: &[String]) -> Option<(String, String)> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if common == a.len() || common == b.len() {
        return None;
    }
    Some((a[..=common].join("::"), b[..=common].join("::")))
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let g = graph();
    let found = cycles(&g.edges);
    for comp in &found {
        println!("cycle among {}:", comp.join(", "));
        for a in comp {
            for b in &g.edges[a] {
                if comp.contains(b) {
                    println!("  {a} → {b}");
                }
            }
        }
    }
    if found.is_empty() {
        println!(
            "no import cycle among {} modules ({} dependencies)",
            g.edges.len(),
            g.edges.values().map(BTreeSet::len).sum::<usize>()
        );
    }
    assert!(found.is_empty(), "{} import cycle(s) in src/", found.len());
}

#[test]
fn no_file_grows_past_what_a_reader_holds() {
    let g = graph();
    let mut big: Vec<(usize, &str)> = g
        .lines
        .values()
        .filter(|(n, _)| *n > MAX_LINES)
        .map(|(n, f)| (*n, f.as_str()))
        .collect();
    big.sort();
    let unexplained: Vec<String> = big
        .iter()
        .filter(|(_, f)| !LARGE_BUT_COHESIVE.iter().any(|(g, _)| g == f))
        .map(|(n, f)| format!("{f} ({n} lines)"))
        .collect();
    for (n, f) in &big {
        println!("{f}: {n} lines");
    }
    assert!(
        unexplained.is_empty(),
        "over {MAX_LINES} lines without a reason in LARGE_BUT_COHESIVE: {}",
        unexplained.join(", ")
    );
}

#[test]
fn the_checker_reads_paths_as_rust_does() {
    let m = vec!["stages".to_string(), "train".to_string()];
    let code = code_only(
        "mod kid;\nuse crate::{a::{b, c::d as z}, e::{self}};\nuse super::export;\n// crate::not::this\nlet s = \"crate::nor::this\";\nexport::f(); self::x::y; z::q(); kid::k; std::fs::read;",
    );
    let got: Vec<String> = paths_in(&code, &m).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "a::b",
            "a::c::d",
            "e",
            "stages::export",
            "stages::export::f",
            "stages::train::x::y",
            "a::c::d::q",
            "stages::train::kid::k"
        ]
    );
}
