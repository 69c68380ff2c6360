//! `trellis-control serve`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use trellis_control::api::credentials::Credentials;
use trellis_control::api::server::{serve, ApiState, CaInfo, XdsTlsKind};
use trellis_control::ca::Ca;
use trellis_control::inject::{self, Resources, Settings, XdsTrust};
use trellis_control::manifest;
use trellis_control::ops::{AppMesh, Identity};
use trellis_control::served_cert::ServedCert;
use trellis_control::store::Store;
use trellis_control::tokens::{TokenKey, TOKEN_KEY_FILE};
use trellis_control::xds;
use trellis_control::xds::registry::Registry;
use trellis_control::xds::server::Xds;
use trellis_control::xds::tls::XdsTls;
use trellis_control::xds::translate::TraceExport;

use super::{ConfigError, InjectorArgs, ServeArgs, TokenPolicy};

fn credentials(args: &ServeArgs) -> anyhow::Result<Option<Credentials>> {
    if args.no_auth {
        if !args.api_addr.ip().is_loopback() {
            return Err(ConfigError(format!(
                "--no-auth is refused: --api-addr {} is not a loopback address",
                args.api_addr
            ))
            .into());
        }
        tracing::warn!("authentication is off (--no-auth): any local process may change the mesh");
        return Ok(None);
    }
    let env = Credentials::from_env(|name| std::env::var(name).ok())
        .map_err(|e| ConfigError(e.to_string()))?;
    // --credentials, else the environment, else the data dir's file.
    let creds = match (&args.credentials, env) {
        (Some(path), _) => {
            let creds = Credentials::load(path).map_err(|e| ConfigError(e.to_string()))?;
            tracing::info!(path = %path.display(), "accepting the key pairs in the credentials file");
            creds
        }
        (None, Some(creds)) => {
            tracing::info!(
                access_key_id = %creds.preferred().access_key_id,
                "accepting the key pair in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            );
            creds
        }
        (None, None) => {
            let path = args.data_dir.join("credentials");
            let (creds, created) =
                Credentials::load_or_create(&path).map_err(|e| ConfigError(e.to_string()))?;
            if created {
                tracing::info!(path = %path.display(), "created a credentials file with a new key pair");
            } else {
                tracing::info!(path = %path.display(), "accepting the key pairs in the credentials file");
            }
            creds
        }
    };
    Ok(Some(creds))
}

/// The operator's CA when given, else the data dir's, created on first start.
fn ca(args: &ServeArgs) -> anyhow::Result<Arc<Ca>> {
    if args.svid_ttl < super::SVID_TTL_WARN {
        tracing::warn!(
            svid_ttl = ?args.svid_ttl,
            "--svid-ttl under a minute is for tests: a proxy that misses a renewal for half of it loses its identity"
        );
    }
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            let ca = Ca::load(cert, key, &args.trust_domain, args.svid_ttl)
                .map_err(|e| ConfigError(e.to_string()))?;
            tracing::info!(cert = %cert.display(), "issuing SVIDs from the given CA");
            ca
        }
        _ => {
            let dir = args.data_dir.join("ca");
            let (ca, created) = Ca::load_or_create(&dir, &args.trust_domain, args.svid_ttl)
                .map_err(|e| ConfigError(e.to_string()))?;
            let cert = dir.join("ca.pem");
            if created {
                tracing::info!(cert = %cert.display(), "created the mesh CA");
            } else {
                tracing::info!(cert = %cert.display(), "issuing SVIDs from the mesh CA");
            }
            ca
        }
    };
    let ca = args.ca_trust.iter().try_fold(ca, |ca, path| {
        let ca = ca
            .trust_also(path)
            .map_err(|e| ConfigError(e.to_string()))?;
        tracing::info!(bundle = %path.display(), "trusting another CA alongside the issuing one");
        Ok::<_, ConfigError>(ca)
    })?;
    Ok(Arc::new(ca))
}

/// The key node tokens are derived from, created on first start.
fn token_key(args: &ServeArgs) -> anyhow::Result<Arc<TokenKey>> {
    let key = TokenKey::load_or_create(&args.data_dir.join(TOKEN_KEY_FILE))
        .map_err(|e| ConfigError(e.to_string()))?;
    match args.require_node_tokens {
        TokenPolicy::Always => {}
        TokenPolicy::Auto => tracing::warn!(
            "--require-node-tokens auto: until a token is issued, any proxy that reaches xDS gets any node's SVID"
        ),
        TokenPolicy::Never => tracing::warn!(
            "--require-node-tokens never: any proxy that reaches xDS gets any node's SVID (local experiments only)"
        ),
    }
    Ok(Arc::new(key))
}

/// The names the mesh CA puts in the xDS server certificate: the bound IP,
/// or every local address when it is unspecified; `localhost` when the
/// port is reachable on loopback; then the operator's `--xds-san`s.
fn xds_names(args: &ServeArgs) -> Vec<String> {
    let ip = args.xds_addr.ip();
    let mut names = Vec::new();
    if ip.is_unspecified() {
        match if_addrs::get_if_addrs() {
            Ok(ifs) => names.extend(
                ifs.into_iter()
                    .map(|i| i.ip())
                    .filter(|a| a.is_ipv4() == ip.is_ipv4() || ip.is_ipv6())
                    .map(|a| a.to_string()),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list local addresses for the xDS certificate")
            }
        }
    } else {
        names.push(ip.to_string());
    }
    if ip.is_loopback() || ip.is_unspecified() {
        names.push("localhost".into());
    }
    // Injected sidecars dial the injector's --sidecar-xds-addr.
    let sidecar_host = args.injector.webhook_addr.and(
        args.injector
            .sidecar_xds_addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string()),
    );
    for n in args.xds_san.iter().chain(sidecar_host.as_ref()) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// What injected sidecars are told to trust for xDS: the operator's bundle
/// (`--sidecar-xds-ca`), else the mesh bundle when the xDS certificate is
/// the mesh CA's; an operator certificate needs the operator's bundle.
fn sidecar_xds_trust(args: &ServeArgs, kind: XdsTlsKind, ca: &Ca) -> anyhow::Result<XdsTrust> {
    if let Some(path) = &args.injector.sidecar_xds_ca {
        let pem = super::bootstrap::read_bundle(path, "--sidecar-xds-ca")?;
        return Ok(XdsTrust::Bundle(pem));
    }
    match kind {
        XdsTlsKind::Mesh => Ok(XdsTrust::Bundle(ca.bundle_pem().to_string())),
        XdsTlsKind::Off => Ok(XdsTrust::Plaintext),
        XdsTlsKind::Operator => Err(ConfigError(
            "--xds-tls-cert with --webhook-addr needs --sidecar-xds-ca FILE: the CA injected sidecars trust for xDS".into(),
        )
        .into()),
    }
}

/// Clear-text xDS exposes node tokens and SVID keys to the network, so it
/// is refused unless nothing but this host can reach the port.
fn check_plaintext(args: &ServeArgs) -> Result<(), ConfigError> {
    if args.xds_plaintext && !args.xds_addr.ip().is_loopback() {
        return Err(ConfigError(format!(
            "--xds-plaintext is refused: --xds-addr {} is not a loopback address",
            args.xds_addr
        )));
    }
    Ok(())
}

/// TLS for the xDS port, or `None` with `--xds-plaintext` (on loopback).
fn xds_tls(args: &ServeArgs, ca: &Arc<Ca>) -> anyhow::Result<Option<XdsTls>> {
    if args.xds_plaintext {
        tracing::warn!(
            "xDS is in clear text (--xds-plaintext): node tokens and SVID keys are not encrypted"
        );
        return Ok(None);
    }
    let tls = match (&args.xds_tls_cert, &args.xds_tls_key) {
        (Some(cert), Some(key)) => {
            let tls = XdsTls::from_files(cert, key).map_err(|e| ConfigError(e.to_string()))?;
            tracing::info!(cert = %cert.display(), "xDS over TLS with the given certificate");
            tls
        }
        _ => {
            let names = xds_names(args);
            let tls = XdsTls::from_ca(ca.clone(), names.clone())
                .map_err(|e| ConfigError(e.to_string()))?;
            tracing::info!(names = ?names, "xDS over TLS with a certificate from the mesh CA");
            tls
        }
    };
    Ok(Some(tls))
}

fn injector_settings(args: &InjectorArgs, xds_trust: XdsTrust, tokens: TokenPolicy) -> Settings {
    let image = format!(
        "{}:{}",
        args.sidecar_image_repository, args.sidecar_image_tag
    );
    let mut settings = Settings::new(image, args.sidecar_xds_addr.clone(), xds_trust);
    if let Some(init) = &args.init_image {
        settings.init_image = init.clone();
    }
    settings.admin_port = args.envoy_admin_access_port;
    settings.log_level = args.sidecar_log_level.clone();
    settings.resources = Resources {
        cpu_request: Some(args.sidecar_cpu_requests.clone()),
        memory_request: Some(args.sidecar_memory_requests.clone()),
        cpu_limit: args.sidecar_cpu_limits.clone(),
        memory_limit: args.sidecar_memory_limits.clone(),
    };
    settings.egress_ignored_ips = args.ignored_ips.clone();
    settings.prestop_delay_s = args.prestop_delay;
    settings.prestop_hook = args.prestop_hook.into();
    settings.wait_until_proxy_ready = args.wait_until_proxy_ready;
    settings.readiness_probe_initial_delay_s = args.readiness_probe_initial_delay;
    settings.readiness_probe_period_s = args.readiness_probe_period;
    settings.node_tokens = !matches!(tokens, TokenPolicy::Never);
    settings
}

/// How long the certificate the mesh CA issues for the injector lives; a
/// new one is issued at every start.
const WEBHOOK_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The injector, in the log lines of its certificate.
const INJECTOR: &str = "the injector";

/// The injector's certificate: the operator's files, else one from the mesh CA.
fn webhook_cert(args: &InjectorArgs, ca: &Ca) -> anyhow::Result<Arc<ServedCert>> {
    let cert = match (&args.webhook_cert, &args.webhook_key) {
        (Some(cert), Some(key)) => {
            ServedCert::from_files(cert, key, INJECTOR).map_err(|e| ConfigError(e.to_string()))?
        }
        _ => {
            let issued = ca
                .issue_server(&args.webhook_dns_names, WEBHOOK_CERT_LIFETIME)
                .map_err(|e| ConfigError(format!("--webhook-dns-name: {e}")))?;
            tracing::info!(names = ?args.webhook_dns_names, "the injector serves a certificate issued by the mesh CA");
            ServedCert::from_pem(
                issued.cert_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                INJECTOR,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    Ok(Arc::new(cert))
}

/// Mesh-wide tracing, when `--otlp-endpoint` names a collector.
fn trace_export(args: &ServeArgs) -> Result<Option<TraceExport>, ConfigError> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(None);
    };
    let export = TraceExport::parse(endpoint, &args.otlp_protocol, args.trace_sampling)
        .map_err(|e| ConfigError(format!("--otlp-endpoint: {e}")))?;
    tracing::info!(endpoint = %endpoint, protocol = %args.otlp_protocol, sampling = args.trace_sampling, "every proxy exports spans over OTLP");
    Ok(Some(export))
}

fn load(appmesh: &AppMesh, args: &ServeArgs) -> anyhow::Result<()> {
    if args.load.is_empty() {
        return Ok(());
    }
    let docs =
        manifest::load(&args.load, args.mesh.as_deref()).map_err(|e| ConfigError(e.to_string()))?;
    let applied = manifest::apply(&docs, &mut &*appmesh).map_err(|e| ConfigError(e.report()))?;
    tracing::info!(documents = applied.len(), "loaded specs");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

fn open_store(dir: &Path) -> anyhow::Result<Arc<Store>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    Ok(Arc::new(Store::open(&dir.join("trellis.db"))?))
}

/// The xDS listener, with a backlog deep enough for every proxy of a large
/// mesh reconnecting at once (a control plane restart); tokio's default of
/// 1,024 overflows, and the kernel then resets handshakes it dropped.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    check_plaintext(&args)?;
    let store = open_store(&args.data_dir)?;
    let credentials = credentials(&args)?;
    let ca = ca(&args)?;
    let token_key = token_key(&args)?;
    let tls = xds_tls(&args, &ca)?;
    let trace_export = trace_export(&args)?;
    let xds_kind = match (&tls, &args.xds_tls_cert) {
        (None, _) => XdsTlsKind::Off,
        (Some(_), Some(_)) => XdsTlsKind::Operator,
        (Some(_), None) => XdsTlsKind::Mesh,
    };
    let appmesh = AppMesh::new(
        store.clone(),
        Identity {
            region: args.region.clone(),
            account: args.account_id.clone(),
        },
    );
    load(&appmesh, &args)?;
    let injector = match args.injector.webhook_addr {
        Some(_) => Some((
            webhook_cert(&args.injector, &ca)?,
            injector_settings(
                &args.injector,
                sidecar_xds_trust(&args, xds_kind, &ca)?,
                args.require_node_tokens,
            ),
        )),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.api_addr)
            .await
            .with_context(|| format!("cannot listen on --api-addr {}", args.api_addr))?;
        let xds_listener = listen(args.xds_addr)
            .with_context(|| format!("cannot listen on --xds-addr {}", args.xds_addr))?;
        tracing::info!(addr = %args.api_addr, data_dir = %args.data_dir.display(), "App Mesh API listening");
        tracing::info!(addr = %args.xds_addr, tls = tls.is_some(), "xDS (ADS) listening");
        let webhook_listener = match args.injector.webhook_addr {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on --webhook-addr {addr}"))?;
                tracing::info!(%addr, "sidecar injector (HTTPS) listening");
                Some(l)
            }
            None => None,
        };
        let registry = Arc::new(
            Registry::load(store.clone()).context("cannot read the registered instances")?,
        );
        let webhook = injector.map(|(cert, settings)| {
            (cert, Arc::new(inject::server::Webhook::new(store.clone(), settings)))
        });
        let mut xds = Xds::start(store, registry.clone()).context("cannot read the store for xDS")?
            .with_ca(ca.clone())
            .with_token_policy(args.require_node_tokens.into());
        if let Some(export) = trace_export {
            xds = xds.with_tracing(export);
        }
        let state = Arc::new(ApiState::new(appmesh, credentials, registry, token_key).with_ca(CaInfo {
            trust_domain: args.trust_domain.clone(),
            bundle: ca.bundle_pem().to_string(),
            xds_tls: xds_kind,
        }));
        // Both servers stop on the same signal.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut xds_stop = stop_rx.clone();
        let stopped = async move {
            let _ = xds_stop.wait_for(|s| *s).await;
        };
        let xds_task = match tls {
            Some(tls) => tokio::spawn(xds::server::serve_tls(xds_listener, xds, tls, stopped)),
            None => tokio::spawn(xds::server::serve(xds_listener, xds, stopped)),
        };
        let webhook_task = match (webhook_listener, webhook) {
            (Some(l), Some((cert, webhook))) => {
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(inject::server::serve(l, cert, webhook, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })))
            }
            _ => None,
        };
        let api = serve(listener, state, async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        api.await?;
        match xds_task.await {
            Ok(r) => r.context("the xDS server failed")?,
            Err(e) => return Err(anyhow::anyhow!("the xDS server task failed: {e}")),
        }
        if let Some(task) = webhook_task {
            match task.await {
                Ok(r) => r.context("the sidecar injector failed")?,
                Err(e) => return Err(anyhow::anyhow!("the sidecar injector task failed: {e}")),
            }
        }
        drop(stop_rx);
        Ok(())
    })
}
