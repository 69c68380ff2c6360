//! Every App Mesh spec in the public-examples corpus either loads or fails
//! with an error naming its file, document and field. The outcome of each
//! file is pinned in `corpus/RESULTS.md`; run with `TRELLIS_BLESS=1` to
//! rewrite that table after an intended change.
//!
//! Files of one walkthrough are loaded together into one store, in the
//! order their resources depend on each other, the way the walkthrough's
//! script would; meshes the files use but do not define (the scripts made
//! them with CloudFormation) are created first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use trellis_control::manifest::{self, Document};
use trellis_control::model::Kind;
use trellis_control::ops::{AppMesh, Identity};
use trellis_control::store::Store;

const DEFAULT_MESH: &str = "corpus-mesh";

fn corpus_dir() -> PathBuf {
    std::env::var_os("TRELLIS_APPMESH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus"))
}

/// A value the walkthrough scripts would plausibly have exported.
fn plausible(var: &str) -> String {
    match var {
        "CANARY_ROUTES" => "{virtualNodeRef: {name: microservice-v1}, weight: 100}".into(),
        "CANARY_VERSION" => "v1".into(),
        "MICROSERVICE_NAME" => "microservice".into(),
        "MESH" | "MESH_NAME" => DEFAULT_MESH.into(),
        "VS_ARN" => format!(
            "arn:aws:appmesh:us-west-2:123456789012:mesh/{DEFAULT_MESH}/virtualService/backend.appmesh-demo"
        ),
        "DNS_HOSTNAME" => "app.appmesh-demo.svc.cluster.local".into(),
        v if v.contains("NAMESPACE") => "appmesh-demo".into(),
        v if v.contains("IMAGE") => "example.com/app:latest".into(),
        v if v.contains("ACCOUNT") => "123456789012".into(),
        v if v.contains("VS") || v.contains("VIRTUAL_SERVICE") || v.contains("VIRTUALSERVICE") => {
            "colorteller.corpus.local".into()
        }
        v => v.to_lowercase().replace('_', "-"),
    }
}

/// Replaces `$VAR` and `${VAR}`; in JSON, a placeholder outside a string
/// becomes a quoted string, as the scripts' own quoting produced.
fn substitute(text: &str, json: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut in_string = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' && (i == 0 || chars[i - 1] != '\\') {
            in_string = !in_string;
        }
        if c == '$' {
            let braced = chars.get(i + 1) == Some(&'{');
            let start = if braced { i + 2 } else { i + 1 };
            let mut end = start;
            while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_') {
                end += 1;
            }
            let closed = !braced || chars.get(end) == Some(&'}');
            if end > start && closed {
                let var: String = chars[start..end].iter().collect();
                let value = plausible(&var);
                if json && !in_string {
                    out.push_str(&format!("\"{value}\""));
                } else {
                    out.push_str(&value);
                }
                i = if braced { end + 1 } else { end };
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `walkthroughs_howto-http2_mesh_route.json` → `walkthroughs_howto-http2`.
fn group_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('_').collect();
    let n = if parts.first() == Some(&"examples") {
        3
    } else {
        2
    };
    parts[..n.min(parts.len())].join("_")
}

fn store() -> AppMesh {
    AppMesh::new(
        Arc::new(Store::open_in_memory().expect("in-memory store")),
        Identity {
            region: "us-west-2".into(),
            account: "123456789012".into(),
        },
    )
}

struct Loaded {
    file: String,
    staged: PathBuf,
    result: Result<(), String>,
}

#[test]
fn every_corpus_file_loads_or_fails_clearly() {
    let root = corpus_dir();
    let staged = tempfile::tempdir().expect("temp dir");
    let mut groups: BTreeMap<String, Vec<Loaded>> = BTreeMap::new();
    for sub in ["cli", "k8s"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(sub))
            .expect("corpus folder")
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let text = std::fs::read_to_string(&path).expect("corpus file");
            let json = name.ends_with(".json");
            let copy = staged.path().join(sub).join(&name);
            std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
            std::fs::write(&copy, substitute(&text, json)).expect("write");
            let result = manifest::load(std::slice::from_ref(&copy), Some(DEFAULT_MESH))
                .map(|_| ())
                .map_err(|e| e.to_string());
            groups.entry(group_of(&name)).or_default().push(Loaded {
                file: format!("{sub}/{name}"),
                staged: copy,
                result,
            });
        }
    }
    let mut outcomes: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for (_, loaded) in groups {
        let appmesh = store();
        // Files that parse are read together, so references between them
        // resolve to the names their targets declare.
        let readable: Vec<PathBuf> = loaded
            .iter()
            .filter(|l| l.result.is_ok())
            .map(|l| l.staged.clone())
            .collect();
        let together = manifest::load(&readable, Some(DEFAULT_MESH))
            .expect("files that load alone load together");
        let mut docs: Vec<(String, Document)> = Vec::new();
        for l in loaded {
            for d in together.iter().filter(|d| d.file == l.staged) {
                docs.push((l.file.clone(), d.clone()));
            }
            outcomes.insert(l.file, l.result);
        }
        let defined: Vec<String> = docs
            .iter()
            .filter(|(_, d)| d.kind == Kind::Mesh)
            .filter_map(|(_, d)| d.input["meshName"].as_str().map(str::to_string))
            .collect();
        for (_, d) in &docs {
            if let Some(mesh) = d.input["meshName"]
                .as_str()
                .filter(|m| !defined.iter().any(|x| x == m))
            {
                let _ = appmesh.call("CreateMesh", &json!({ "meshName": mesh }));
            }
        }
        docs.sort_by_key(|(_, d)| d.kind);
        for (file, doc) in docs {
            let result = manifest::apply(std::slice::from_ref(&doc), &mut &appmesh);
            if let (Err(e), Some(slot)) = (result, outcomes.get_mut(&file)) {
                if slot.is_ok() {
                    *slot = Err(e.to_string());
                }
            }
        }
    }
    let staged_prefix = format!("{}/", staged.path().display());
    let mut rows = Vec::new();
    for (file, outcome) in outcomes {
        let cell = match outcome {
            Ok(()) => "loads".to_string(),
            Err(e) => {
                assert!(
                    e.starts_with(&staged_prefix),
                    "error does not name the file: {e}"
                );
                let e = e.replacen(&staged_prefix, "", 1);
                assert!(e.starts_with(&file), "error names the wrong file: {e}");
                assert!(
                    e.contains(": document "),
                    "error does not name the document: {e}"
                );
                format!("fails: {}", e[file.len()..].trim_start_matches(": "))
            }
        };
        rows.push(format!("| `{}` | {} |", file, cell.replace('|', "\\|")));
    }
    rows.sort();
    let table = format!(
        "# App Mesh example corpus: what loads\n\n\
         Generated by `control/tests/corpus.rs` (run it with `TRELLIS_BLESS=1` to refresh).\n\
         Placeholders are replaced with plausible values; files of one walkthrough are\n\
         loaded together; meshes they use but do not define are created first.\n\n\
         | file | outcome |\n|---|---|\n{}\n",
        rows.join("\n")
    );
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/RESULTS.md");
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        std::fs::write(&golden, &table).expect("write RESULTS.md");
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        expected, table,
        "corpus outcomes changed; rerun with TRELLIS_BLESS=1 if intended"
    );
}
