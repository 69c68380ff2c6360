//! The demo's App Mesh resources: the CLI input JSON shipped in
//! `examples/demo/appmesh/`, applied through the App Mesh API with
//! `trellis-control apply` (signed requests, as `aws appmesh` would send).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::layout::Layout;

/// A canary step: the route file that sets it, and the weights it sets.
pub struct Step {
    pub file: PathBuf,
    pub weights: (u64, u64),
}

fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no App Mesh JSON in {}", dir.display());
    }
    Ok(files)
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Copies the specs into `out`, with listener ports moved to the layout's.
pub fn prepare(specs: &Path, layout: &Layout, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for file in json_files(&specs.join("cli"))? {
        let mut doc = read(&file)?;
        let port = match (
            doc["virtualNodeName"].as_str(),
            doc["virtualGatewayName"].as_str(),
        ) {
            (Some("frontend"), _) => Some(layout.frontend.app),
            (Some("backend-v1"), _) => Some(layout.backend_v1.app),
            (Some("backend-v2"), _) => Some(layout.backend_v2.app),
            (None, Some(_)) if doc.get("gatewayRouteName").is_none() => Some(layout.gateway),
            _ => None,
        };
        if let Some(port) = port {
            let Some(listeners) = doc["spec"]["listeners"].as_array_mut() else {
                bail!("{}: spec.listeners missing", file.display());
            };
            for l in listeners {
                l["portMapping"]["port"] = port.into();
            }
        }
        let name = file.file_name().context("spec file without a name")?;
        std::fs::write(out.join(name), serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}

/// The canary route files in order, with the weights each one sets.
pub fn steps(specs: &Path) -> anyhow::Result<Vec<Step>> {
    json_files(&specs.join("canary"))?
        .into_iter()
        .map(|file| {
            let doc = read(&file)?;
            let targets = doc["spec"]["httpRoute"]["action"]["weightedTargets"]
                .as_array()
                .with_context(|| format!("{}: no weightedTargets", file.display()))?;
            let weight = |node: &str| {
                targets
                    .iter()
                    .find(|t| t["virtualNode"] == node)
                    .and_then(|t| t["weight"].as_u64())
                    .unwrap_or(0)
            };
            let weights = (weight("backend-v1"), weight("backend-v2"));
            Ok(Step { file, weights })
        })
        .collect()
}
