//! Loading App Mesh specs from files: Kubernetes manifests of the App Mesh
//! controller (`appmesh.k8s.aws/v1beta2`) and `aws appmesh ...
//! --cli-input-json` documents, turned into API inputs and applied through
//! the same operations (and so the same validation) as API calls.

mod cli_json;
mod k8s;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorKind};
use crate::inject::PodBinding;
use crate::model::Kind;
use crate::ops::{stored_spec, AppMesh};

/// One resource to apply, with where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: PathBuf,
    /// 1-based position of the document in its file.
    pub index: usize,
    pub kind: Kind,
    /// The input of the resource's `Create*` operation.
    pub input: Value,
    /// For a VirtualNode manifest: which pods it selects, for the injector.
    pub pods: Option<PodBinding>,
}

impl Document {
    pub fn label(&self) -> String {
        let name = self.input[self.kind.name_field()].as_str().unwrap_or("?");
        format!("{} {name}", self.kind.type_name())
    }

    /// `FILE: document N (Kind name)`, as errors name a document.
    pub fn located(&self) -> String {
        format!(
            "{}: document {} ({})",
            self.file.display(),
            self.index,
            self.label()
        )
    }

    fn error(&self, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.clone(),
            index: Some(self.index),
            label: Some(self.label()),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}{}: {message}", file.display(),
    index.map(|i| format!(": document {i}")).unwrap_or_default(),
    label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
pub struct ManifestError {
    pub file: PathBuf,
    pub index: Option<usize>,
    pub label: Option<String>,
    pub message: String,
}

impl ManifestError {
    fn new(
        file: &Path,
        index: Option<usize>,
        label: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ManifestError {
            file: file.to_path_buf(),
            index,
            label,
            message: message.into(),
        }
    }
}

/// Why [`apply`] stopped. Documents are applied one by one, as App Mesh
/// and `kubectl apply` do: those applied before the failure stay applied.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct ApplyError {
    pub error: Box<ManifestError>,
    /// Applied before the failure, and kept.
    pub applied: Vec<(Outcome, String)>,
    /// The failed document and those after it, never tried, as
    /// [`Document::located`] names them.
    pub not_applied: Vec<String>,
}

impl ApplyError {
    /// The error, then which documents were applied and kept and which
    /// were not, one line each.
    pub fn report(&self) -> String {
        let applied = if self.applied.is_empty() {
            "none".to_string()
        } else {
            self.applied
                .iter()
                .map(|(outcome, label)| format!("{label} ({})", outcome.verb()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{}\napplied before the failure, and kept: {applied}\nnot applied: {}",
            self.error,
            self.not_applied.join(", ")
        )
    }
}

/// What applying one document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    pub fn verb(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

fn is_spec_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let io = |e: std::io::Error| ManifestError::new(path, None, None, e.to_string());
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || is_spec_file(&entry) {
                collect_files(&entry, out)?;
            }
        }
        Ok(())
    } else if path.exists() {
        out.push(path.to_path_buf());
        Ok(())
    } else {
        Err(ManifestError::new(
            path,
            None,
            None,
            "no such file or directory",
        ))
    }
}

/// A parsed file: either one CLI input document or Kubernetes objects.
pub(crate) struct Source {
    pub file: PathBuf,
    pub docs: Vec<Value>,
}

fn read_source(file: &Path) -> Result<Source, ManifestError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ManifestError::new(file, None, None, e.to_string()))?;
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    let docs = if is_json {
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ManifestError::new(file, Some(1), None, format!("not valid JSON: {e}")))?;
        vec![value]
    } else {
        let mut docs = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| {
                ManifestError::new(file, Some(i + 1), None, format!("not valid YAML: {e}"))
            })?;
            let ours = value
                .get("apiVersion")
                .and_then(serde_yaml::Value::as_str)
                .is_some_and(|v| v.starts_with("appmesh.k8s.aws/"))
                || value.get("kind").and_then(serde_yaml::Value::as_str) == Some("Namespace");
            // Other kinds are skipped, so their content (templating
            // leftovers included) is none of our business.
            let value = match serde_json::to_value(value) {
                Ok(v) => v,
                Err(_) if !ours => Value::Null,
                Err(e) => {
                    return Err(ManifestError::new(
                        file,
                        Some(i + 1),
                        None,
                        format!("not representable as JSON: {e}"),
                    ))
                }
            };
            docs.push(value);
        }
        docs
    };
    Ok(Source {
        file: file.to_path_buf(),
        docs,
    })
}

/// Reads every file under `paths` into documents to apply. `default_mesh`
/// names the mesh for documents that do not say (CLI input whose script
/// passed `--mesh-name`, manifests whose mesh comes from namespace labels
/// that are not in the files).
pub fn load(paths: &[PathBuf], default_mesh: Option<&str>) -> Result<Vec<Document>, ManifestError> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    let sources: Vec<Source> = files
        .iter()
        .map(|f| read_source(f))
        .collect::<Result<_, _>>()?;
    let mut documents = Vec::new();
    let mut kube = Vec::new();
    for source in &sources {
        let single_cli = source.docs.len() == 1 && source.docs[0].get("apiVersion").is_none();
        if single_cli {
            documents.push(cli_json::document(
                &source.file,
                &source.docs[0],
                default_mesh,
            )?);
        } else {
            kube.push(source);
        }
    }
    documents.extend(k8s::documents(&kube, default_mesh)?);
    Ok(documents)
}

/// Where documents go: the operations in-process (`serve --load`) or over
/// the signed API (`apply`).
pub trait Target {
    /// Runs one App Mesh operation.
    fn call(&mut self, op: &str, input: &Value) -> Result<Value, ApiError>;
    /// Records a virtual node's pod binding; whether it changed.
    fn put_pod_binding(&mut self, binding: &PodBinding) -> Result<bool, ApiError>;
}

impl Target for &AppMesh {
    fn call(&mut self, op: &str, input: &Value) -> Result<Value, ApiError> {
        AppMesh::call(self, op, input)
    }

    fn put_pod_binding(&mut self, binding: &PodBinding) -> Result<bool, ApiError> {
        AppMesh::put_pod_binding(self, binding)
    }
}

/// Applies documents in dependency order: each is created if absent and
/// updated if present (`kubectl apply` semantics), then its pod binding is
/// recorded. Stops at the first failure; what was applied before it stays.
pub fn apply(
    documents: &[Document],
    target: &mut impl Target,
) -> Result<Vec<(Outcome, String)>, ApplyError> {
    let mut ordered: Vec<&Document> = documents.iter().collect();
    ordered.sort_by_key(|d| d.kind);
    let mut done = Vec::new();
    for (i, doc) in ordered.iter().enumerate() {
        match apply_one(doc, target) {
            Ok(outcome) => done.push((outcome, doc.label())),
            Err(error) => {
                return Err(ApplyError {
                    error: Box::new(error),
                    applied: done,
                    not_applied: ordered[i..].iter().map(|d| d.located()).collect(),
                })
            }
        }
    }
    Ok(done)
}

fn apply_one(doc: &Document, target: &mut impl Target) -> Result<Outcome, ManifestError> {
    let kind = doc.kind.type_name();
    let mut identity = doc.input.clone();
    if let Some(obj) = identity.as_object_mut() {
        obj.retain(|k, _| k.ends_with("Name"));
    }
    let mut outcome = match target.call(&format!("Describe{kind}"), &identity) {
        Ok(current) => {
            let same =
                current[doc.kind.segment()]["spec"] == stored_spec(doc.kind, doc.input.get("spec"));
            if same {
                Outcome::Unchanged
            } else {
                let mut update = doc.input.clone();
                if let Some(obj) = update.as_object_mut() {
                    obj.remove("tags");
                }
                target
                    .call(&format!("Update{kind}"), &update)
                    .map_err(|e| doc.error(e.to_string()))?;
                Outcome::Updated
            }
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            target
                .call(&format!("Create{kind}"), &doc.input)
                .map_err(|e| doc.error(e.to_string()))?;
            Outcome::Created
        }
        Err(e) => return Err(doc.error(e.to_string())),
    };
    if let Some(binding) = &doc.pods {
        let changed = target
            .put_pod_binding(binding)
            .map_err(|e| doc.error(e.to_string()))?;
        if changed && outcome == Outcome::Unchanged {
            outcome = Outcome::Updated;
        }
    }
    Ok(outcome)
}
