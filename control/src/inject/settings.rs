//! What the injector puts into pods, from `serve`'s flags (named after the
//! App Mesh controller's: `--sidecar-image-repository`, `--init-image`,
//! `--sidecar-cpu-requests`, ...), checked once at start.

use std::fmt;

/// Ports the proxy listens on for intercepted traffic; fixed, as in App
/// Mesh (its `proxyIngressPort`/`proxyEgressPort` annotations were too).
pub const INGRESS_PORT: u16 = 15000;
pub const EGRESS_PORT: u16 = 15001;
/// The UID the proxy runs as, whose own traffic the rules leave alone.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Container names; another webhook or a second pass sees them and knows
/// the pod is already injected.
pub const SIDECAR_NAME: &str = "trellis-proxy";
pub const INIT_NAME: &str = "trellis-init";

/// A Kubernetes resource quantity (`10m`, `32Mi`, `1.5`, `2e3`), checked
/// here so that a bad value never reaches the API server inside a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let bad = || format!("'{text}' is not a Kubernetes quantity (such as 100m, 0.5, 64Mi)");
        let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
        let digits_end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(digits_end);
        let dots = number.matches('.').count();
        if number.is_empty() || number == "." || dots > 1 {
            return Err(bad());
        }
        let suffix_ok = matches!(
            suffix,
            "" | "n"
                | "u"
                | "m"
                | "k"
                | "M"
                | "G"
                | "T"
                | "P"
                | "E"
                | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "Ei"
        ) || suffix
            .strip_prefix(['e', 'E'])
            .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
            .is_some_and(|exp| !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()));
        if !suffix_ok {
            return Err(bad());
        }
        Ok(Quantity(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Requests and limits of the injected containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
}

/// An outbound destination the interception leaves alone: an address or a
/// CIDR, kept in the text form `APPMESH_EGRESS_IGNORED_IP` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredIp(String);

impl IgnoredIp {
    pub fn parse(text: &str) -> Result<IgnoredIp, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let bad = || format!("'{text}' is not an IP address or CIDR");
        let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if let Some(p) = prefix {
            match p.parse::<u8>() {
                Ok(n) if n <= max => {}
                _ => return Err(bad()),
            }
        }
        Ok(IgnoredIp(text.to_string()))
    }

    /// Parses a comma-separated list; empty items are skipped.
    pub fn parse_list(text: &str) -> Result<Vec<IgnoredIp>, String> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(IgnoredIp::parse)
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A comma-separated list of ports, each 1 to 65535.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("'{p}' is not a port (1-65535)")),
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidecar's image (`repository:tag`).
    pub sidecar_image: String,
    /// The init container's image: by default the sidecar's, whose
    /// `trellis-proxy init` installs the rules.
    pub init_image: String,
    /// `TRELLIS_XDS_ADDR` of injected proxies: how pods reach trellis-control.
    pub xds_addr: String,
    /// How injected proxies trust the xDS port.
    pub xds_trust: XdsTrust,
    /// `ENVOY_ADMIN_ACCESS_PORT`: the admin API (on 127.0.0.1) that the
    /// probes ask `/ready`.
    pub admin_port: u16,
    /// `ENVOY_LOG_LEVEL`.
    pub log_level: String,
    pub resources: Resources,
    /// Default of `APPMESH_EGRESS_IGNORED_IP` (the instance metadata
    /// address, as App Mesh's `--ignored-ips`).
    pub egress_ignored_ips: Vec<IgnoredIp>,
    /// Default of `APPMESH_EGRESS_IGNORED_PORTS` (22, as App Mesh).
    pub egress_ignored_ports: Vec<u16>,
    /// Seconds the sidecar waits after the pod is told to stop before it
    /// drains, so the app stops sending first; 0 for no `preStop` hook.
    pub prestop_delay_s: u32,
    /// How the `preStop` hook waits.
    pub prestop_hook: PreStopHook,
    /// Start the sidecar first and hold the app until the proxy is ready
    /// (a `postStart` hook running `trellis-proxy wait-ready`).
    pub wait_until_proxy_ready: bool,
    pub readiness_probe_initial_delay_s: u32,
    pub readiness_probe_period_s: u32,
    /// Whether the sidecar reads its node's token (`TRELLIS_XDS_TOKEN`) from
    /// the node's Secret; off only for a server that requires no tokens.
    pub node_tokens: bool,
}

/// How the sidecar's `preStop` hook waits out `prestop_delay_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreStopHook {
    /// The `sleep` action (Kubernetes 1.30 and later): nothing needed in
    /// the image.
    #[default]
    Sleep,
    /// An `exec` of `sleep SECONDS`, for older clusters: the sidecar image
    /// must have a `sleep` command.
    Exec,
}

/// What injected proxies are told about xDS TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsTrust {
    /// `TRELLIS_XDS_CA`: the PEM bundle the xDS certificate chains to.
    Bundle(String),
    /// `TRELLIS_XDS_PLAINTEXT=1`: a control plane serving clear text.
    Plaintext,
}

impl Settings {
    /// Defaults for the given images and xDS address and trust.
    pub fn new(sidecar_image: String, xds_addr: String, xds_trust: XdsTrust) -> Settings {
        Settings {
            init_image: sidecar_image.clone(),
            sidecar_image,
            xds_addr,
            xds_trust,
            admin_port: 9901,
            log_level: "info".into(),
            resources: Resources {
                cpu_request: Some(Quantity("10m".into())),
                memory_request: Some(Quantity("32Mi".into())),
                cpu_limit: None,
                memory_limit: None,
            },
            egress_ignored_ips: vec![IgnoredIp("169.254.169.254".into())],
            egress_ignored_ports: vec![22],
            prestop_delay_s: 20,
            prestop_hook: PreStopHook::Sleep,
            wait_until_proxy_ready: false,
            readiness_probe_initial_delay_s: 1,
            readiness_probe_period_s: 10,
            node_tokens: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_writes_them() {
        for ok in [
            "10m", "32Mi", "1", "0.5", ".5", "1.5Gi", "2e3", "1E-2", "+1k", "100n",
        ] {
            assert!(Quantity::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "m", "10 m", "1.2.3", "10mb", "1e", "abc", "32MI", "1..0",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ignored_ips_and_ports() {
        assert!(IgnoredIp::parse_list("169.254.169.254, 10.0.0.0/8,fd00::/8").is_ok());
        assert!(IgnoredIp::parse("10.0.0.0/33").is_err());
        assert!(IgnoredIp::parse("host.example").is_err());
        assert_eq!(parse_ports("80, 8080,").unwrap(), vec![80, 8080]);
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("http").is_err());
    }
}
