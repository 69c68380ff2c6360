//! `trellis-control status`: the connected proxies and what they ACKed or
//! NACKed, like `istioctl proxy-status`, from `GET /trellis/v1/proxies`.

use anyhow::Context;
use http::Method;
use serde_json::Value;
use trellis_control::api::client::Client;
use xds_protos::type_url;

use super::{RegisterArgs, StatusArgs, TokenAction, TokenArgs, TokenOutput};

const COLUMNS: [(&str, &str); 4] = [
    ("CDS", type_url::CLUSTER),
    ("EDS", type_url::CLUSTER_LOAD_ASSIGNMENT),
    ("LDS", type_url::LISTENER),
    ("RDS", type_url::ROUTE_CONFIGURATION),
];

/// `SYNCED` when the proxy ACKed what was sent last, `NACKED` when it
/// refused it, `STALE` while an update is in flight.
fn cell(types: &Value, url: &str) -> String {
    let t = &types[url];
    if t.is_null() {
        return "-".into();
    }
    let sent = t["sent"].as_str();
    let acked = t["acked"].as_str();
    let nacked = t["nack"]["version"].as_str();
    let state = if sent.is_some() && nacked == sent {
        "NACKED"
    } else if sent == acked {
        "SYNCED"
    } else {
        "STALE"
    };
    format!("{state} ({})", acked.unwrap_or("none"))
}

pub fn render_table(proxies: &Value) -> String {
    let mut rows = vec![vec!["NODE".to_string(), "ADDRESS".into(), "STREAM".into()]];
    rows[0].extend(COLUMNS.iter().map(|(c, _)| c.to_string()));
    let mut errors = Vec::new();
    for p in proxies.as_array().into_iter().flatten() {
        let node = p["node_id"].as_str().unwrap_or("?").to_string();
        let mut row = vec![
            node.clone(),
            p["address"].as_str().unwrap_or("").to_string(),
            p["stream"].as_str().unwrap_or("").to_string(),
        ];
        row.extend(COLUMNS.iter().map(|(_, url)| cell(&p["types"], url)));
        rows.push(row);
        for (name, url) in COLUMNS {
            if let Some(err) = p["types"][url]["nack"]["error"].as_str() {
                errors.push(format!("{node} {name} NACK: {err}"));
            }
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for e in errors {
        out.push_str(&e);
        out.push('\n');
    }
    out
}

pub(super) fn client(args: &StatusArgs) -> anyhow::Result<(tokio::runtime::Runtime, Client)> {
    let key = super::signing_key(args.credentials.as_deref(), &args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = Client::new(args.api_addr.to_string(), key, args.region.clone());
    Ok((runtime, client))
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (runtime, client) = client(&args)?;
    let proxies = runtime
        .block_on(client.trellis(Method::GET, "/trellis/v1/proxies", Vec::new()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        super::out(&format!("{}\n", serde_json::to_string_pretty(&proxies)?))?;
    } else {
        super::out(&render_table(&proxies))?;
    }
    Ok(())
}

/// `trellis-control register-instance`: `POST` (or `DELETE`)
/// `/trellis/v1/instances`, for a virtual node or a Cloud Map service.
pub fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let (runtime, client) = client(&args.api)?;
    let mut body = serde_json::json!({
        "address": args.address.to_string(),
        "port": args.port,
    });
    match (args.mesh, args.virtual_node, args.namespace, args.service) {
        (Some(mesh), Some(node), _, _) => {
            body["meshName"] = mesh.into();
            body["virtualNodeName"] = node.into();
        }
        (_, _, Some(namespace), Some(service)) => {
            body["namespaceName"] = namespace.into();
            body["serviceName"] = service.into();
            let attributes: serde_json::Map<String, serde_json::Value> = args
                .attributes
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect();
            body["attributes"] = attributes.into();
        }
        _ => anyhow::bail!("name --mesh and --virtual-node, or --namespace and --service"),
    }
    let method = if args.deregister {
        Method::DELETE
    } else {
        Method::POST
    };
    runtime
        .block_on(client.trellis(
            method,
            "/trellis/v1/instances",
            body.to_string().into_bytes(),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The body naming a node for `/trellis/v1/tokens`.
pub(super) fn token_body(
    mesh: &str,
    node: Option<&str>,
    gateway: Option<&str>,
    reuse: bool,
) -> Vec<u8> {
    let mut body = serde_json::json!({"meshName": mesh});
    if reuse {
        body["reuse"] = true.into();
    }
    if let Some(n) = node {
        body["virtualNodeName"] = n.into();
    }
    if let Some(g) = gateway {
        body["virtualGatewayName"] = g.into();
    }
    body.to_string().into_bytes()
}

/// `trellis-control token issue|revoke|list` over `/trellis/v1/tokens`.
pub fn token(action: TokenAction) -> anyhow::Result<()> {
    let body = |a: &TokenArgs, reuse| {
        token_body(
            &a.mesh,
            a.virtual_node.as_deref(),
            a.virtual_gateway.as_deref(),
            reuse,
        )
    };
    let (method, api, body) = match &action {
        TokenAction::Issue(a) => (Method::POST, &a.node.api, body(&a.node, a.reuse)),
        TokenAction::Revoke(a) => (Method::DELETE, &a.api, body(a, false)),
        TokenAction::List(api) => (Method::GET, api, Vec::new()),
    };
    let (runtime, client) = client(api)?;
    let reply = runtime
        .block_on(client.trellis(method, "/trellis/v1/tokens", body))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match action {
        TokenAction::Issue(a) => {
            let token = reply["token"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the API returned no token"))?;
            match (a.output, a.namespace) {
                (TokenOutput::K8sSecret, Some(ns)) => {
                    let id = a.node.node_id();
                    super::out(&trellis_control::tokens::k8s_secret(&id, &ns, token))?
                }
                _ => super::out(&format!("{token}\n"))?,
            }
        }
        TokenAction::Revoke(_) => {}
        TokenAction::List(_) => {
            super::out(&format!("{}\n", serde_json::to_string_pretty(&reply)?))?
        }
    }
    Ok(())
}
