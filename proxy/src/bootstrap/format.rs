use std::path::Path;

/// The syntax of a bootstrap file. Envoy picks it from the extension; so do we, and
/// sniff the text when the extension says nothing (`/dev/stdin`, `bootstrap.conf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    pub fn of(path: &Path, text: &str) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            _ => Format::sniff(text),
        }
    }

    /// A JSON bootstrap is an object, so it starts with `{`; a YAML file rarely does,
    /// and the JSON reader's errors (line and column) are the sharper ones.
    fn sniff(text: &str) -> Format {
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}
