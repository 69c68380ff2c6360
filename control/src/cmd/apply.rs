//! `trellis-control apply -f PATH`: goes through the API with signed
//! requests, so the running server validates every document and notifies
//! its watchers, exactly as for `aws appmesh` calls.

use anyhow::Context;
use serde_json::Value;
use trellis_control::api::client::Client;
use trellis_control::inject::PodBinding;
use trellis_control::manifest::{self, Target};
use trellis_control::{ApiError, ErrorKind};

use super::{ApplyArgs, ConfigError};

/// The running server, called over its signed API.
struct Api {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// Whether the last failure was the server's (unreachable, 5xx) rather
    /// than a document it refused.
    unreachable: bool,
}

impl Api {
    fn note<T>(&mut self, reply: Result<T, ApiError>) -> Result<T, ApiError> {
        if let Err(e) = &reply {
            self.unreachable = e.kind == ErrorKind::InternalServerError;
        }
        reply
    }
}

impl Target for Api {
    fn call(&mut self, op: &str, input: &Value) -> Result<Value, ApiError> {
        let reply = self.runtime.block_on(self.client.call(op, input));
        self.note(reply)
    }

    fn put_pod_binding(&mut self, binding: &PodBinding) -> Result<bool, ApiError> {
        let body = serde_json::to_vec(binding)
            .map_err(|e| ApiError::internal(format!("cannot encode a pod binding: {e}")))?;
        let reply = self.runtime.block_on(self.client.trellis(
            http::Method::PUT,
            "/trellis/v1/pod-selectors",
            body,
        ));
        self.note(reply)
            .map(|v| v["changed"].as_bool().unwrap_or(true))
    }
}

pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let docs = manifest::load(&args.files, args.mesh.as_deref())
        .map_err(|e| ConfigError(e.to_string()))?;
    let key = super::signing_key(args.credentials.as_deref(), &args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut api = Api {
        runtime,
        client: Client::new(args.api_addr.to_string(), key, args.region.clone()),
        unreachable: false,
    };
    let result = manifest::apply(&docs, &mut api);
    let applied = match &result {
        Ok(applied) => applied,
        Err(e) => &e.applied,
    };
    for (outcome, label) in applied {
        super::out(&format!("{label} {}\n", outcome.verb()))?;
    }
    result.map(drop).map_err(|e| -> anyhow::Error {
        // A document the server refused is a bad file (exit 2); a server
        // that cannot be reached or failed is not.
        if api.unreachable {
            anyhow::anyhow!(e.report())
        } else {
            ConfigError(e.report()).into()
        }
    })
}
