//! `docs/envoy-subset.md` is rendered from the tables in `supported.rs`, so
//! the page users read is the list the proxy enforces. The test fails when
//! they drift; `TRELLIS_BLESS=1 cargo test -p trellis-proxy --lib
//! envoy_subset` rewrites the page.

use std::fmt::Write;

use super::supported::{Rule, DELEGATED, IGNORED, SUPPORTED};

fn render() -> String {
    let mut out = String::new();
    out.push_str(
        "# The Envoy bootstrap and xDS subset\n\n\
         trellis-proxy reads Envoy v3 bootstraps and xDS resources through the\n\
         protobuf reflection pool and holds every message against this list: a\n\
         field set in a config and not listed here is refused by name (exit 2 for\n\
         a bootstrap, a NACK for an xDS resource), never dropped silently. The\n\
         page is generated from `proxy/src/config/supported.rs` by a test, so it\n\
         is the list the proxy enforces.\n\n\
         ## Implemented fields, by message\n\n",
    );
    for entry in SUPPORTED {
        let _ = writeln!(out, "### `{}`\n", entry.message);
        for (field, rule) in entry.fields {
            let detail = match rule {
                Rule::Walk => String::new(),
                Rule::Opaque => " (free-form data)".to_string(),
                Rule::Values(values) => format!(
                    ": {}",
                    values
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Rule::Extension(urls) => format!(
                    ", one of: {}",
                    urls.iter()
                        .map(|u| format!("`{}`", u.trim_start_matches("type.googleapis.com/")))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let _ = writeln!(out, "- `{field}`{detail}");
        }
        out.push('\n');
    }
    out.push_str("## Checked where they are compiled\n\n");
    for d in DELEGATED {
        let _ = writeln!(out, "- `{}`: checked by `{}`", d.message, d.checked_by);
    }
    out.push_str(
        "\n## Accepted and ignored\n\n\
         Set in many existing configs and without effect in trellis; accepted so\n\
         that those configs load.\n\n\
         | message | field | why |\n|---|---|---|\n",
    );
    for i in IGNORED {
        let _ = writeln!(out, "| `{}` | `{}` | {} |", i.message, i.field, i.reason);
    }
    out
}

#[test]
fn envoy_subset_page_matches_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/envoy-subset.md");
    let want = render();
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        std::fs::write(path, &want).expect("write docs/envoy-subset.md");
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/envoy-subset.md is stale: run TRELLIS_BLESS=1 cargo test -p trellis-proxy --lib envoy_subset"
    );
}
