//! `trellis-control apply -f PATH`: goes through the API with signed
//! requests, so the running server validates every document and notifies
//! its watchers, exactly as for `aws appmesh` calls.

use anyhow::Context;
use trellis_control::api::client::Client;
use trellis_control::api::credentials::Credentials;
use trellis_control::manifest::{self, Outcome};
use trellis_control::ErrorKind;

use super::{ApplyArgs, ConfigError};

pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let docs = manifest::load(&args.files, args.mesh.as_deref())
        .map_err(|e| ConfigError(e.to_string()))?;
    let path = args
        .credentials
        .clone()
        .unwrap_or_else(|| args.data_dir.join("credentials"));
    let creds = Credentials::load(&path).map_err(|e| ConfigError(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = Client::new(
        args.api_addr.to_string(),
        creds.preferred().clone(),
        args.region.clone(),
    );
    let unreachable = std::cell::Cell::new(false);
    let applied = manifest::apply(&docs, |op, input| {
        let reply = runtime.block_on(client.call(op, input));
        if let Err(e) = &reply {
            unreachable.set(e.kind == ErrorKind::InternalServerError);
        }
        reply
    })
    .map_err(|e| -> anyhow::Error {
        // A document the server refused is a bad file (exit 2); a server
        // that cannot be reached or failed is not.
        if unreachable.get() {
            e.into()
        } else {
            ConfigError(e.to_string()).into()
        }
    })?;
    for (outcome, label) in applied {
        let verb = match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        };
        println!("{label} {verb}");
    }
    Ok(())
}
