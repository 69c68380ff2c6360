//! The interception rules as data: App Mesh variables in, iptables argument
//! lists out, so they can be checked without touching the kernel.

use std::net::IpAddr;

use super::{InitError, EGRESS_CHAIN, INGRESS_CHAIN};

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// App Mesh's proxy-init settings, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `APPMESH_APP_PORTS`: inbound connections to these go to the ingress port.
    pub app_ports: Vec<u16>,
    /// `APPMESH_ENVOY_INGRESS_PORT` (15000).
    pub ingress_port: u16,
    /// `APPMESH_ENVOY_EGRESS_PORT` (15001).
    pub egress_port: u16,
    /// `APPMESH_IGNORE_UID` (1337): the proxy's own connections are never redirected,
    /// or they would loop back into it.
    pub ignore_uid: u32,
    /// `APPMESH_EGRESS_IGNORED_PORTS`: outbound destination ports left alone.
    pub egress_ignored_ports: Vec<u16>,
    /// `APPMESH_EGRESS_IGNORED_IP`: outbound destinations (CIDRs) left alone.
    pub egress_ignored_ips: Vec<(IpAddr, u8)>,
}

impl Settings {
    /// Reads the variables through `get` (the environment, or a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Settings, InitError> {
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let port = |name: &'static str, default: u16| match var(name) {
            Some(v) => parse_port(name, &v),
            None => Ok(default),
        };
        let ports = |name: &'static str| match var(name) {
            Some(v) => v.split(',').map(|p| parse_port(name, p)).collect(),
            None => Ok(Vec::new()),
        };
        let ignore_uid = match var("APPMESH_IGNORE_UID") {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| bad("APPMESH_IGNORE_UID", &v, "is not a user id"))?,
            None => 1337,
        };
        let egress_ignored_ips = match var("APPMESH_EGRESS_IGNORED_IP") {
            Some(v) => v
                .split(',')
                .map(|c| parse_cidr(c.trim()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad(
                        "APPMESH_EGRESS_IGNORED_IP",
                        &v,
                        "is not a comma-separated list of IPs or CIDRs",
                    )
                })?,
            None => Vec::new(),
        };
        Ok(Settings {
            app_ports: ports("APPMESH_APP_PORTS")?,
            ingress_port: port("APPMESH_ENVOY_INGRESS_PORT", 15000)?,
            egress_port: port("APPMESH_ENVOY_EGRESS_PORT", 15001)?,
            ignore_uid,
            egress_ignored_ports: ports("APPMESH_EGRESS_IGNORED_PORTS")?,
            egress_ignored_ips,
        })
    }
}

fn bad(var: &'static str, value: &str, why: &'static str) -> InitError {
    InitError::BadVariable {
        var,
        value: value.to_string(),
        why,
    }
}

fn parse_port(var: &'static str, v: &str) -> Result<u16, InitError> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad(var, v, "is not a port (1-65535)")),
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

/// The iptables `multiport` match's limit on ports per rule.
const MULTIPORT_MAX: usize = 15;

fn nat(rest: &[&str]) -> Vec<String> {
    ["-t", "nat"]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

/// The commands that fill both chains (chains already exist; flushed first).
pub fn install(s: &Settings, family: Family) -> Vec<Vec<String>> {
    let ingress = s.ingress_port.to_string();
    let egress = s.egress_port.to_string();
    let uid = s.ignore_uid.to_string();
    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    let mut out = vec![nat(&["-F", INGRESS_CHAIN]), nat(&["-F", EGRESS_CHAIN])];
    // multiport takes at most 15 ports per rule.
    for chunk in s.app_ports.chunks(MULTIPORT_MAX) {
        let ports = join(chunk);
        out.push(nat(&[
            "-A",
            INGRESS_CHAIN,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "REDIRECT",
            "--to-ports",
            &ingress,
        ]));
    }
    out.push(nat(&[
        "-A",
        EGRESS_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    out.push(nat(&["-A", EGRESS_CHAIN, "-d", loopback, "-j", "RETURN"]));
    for chunk in s.egress_ignored_ports.chunks(MULTIPORT_MAX) {
        let ports = join(chunk);
        out.push(nat(&[
            "-A",
            EGRESS_CHAIN,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "RETURN",
        ]));
    }
    for (ip, len) in &s.egress_ignored_ips {
        if ip.is_ipv4() != (family == Family::V4) {
            continue;
        }
        let cidr = format!("{ip}/{len}");
        out.push(nat(&["-A", EGRESS_CHAIN, "-d", &cidr, "-j", "RETURN"]));
    }
    out.push(nat(&[
        "-A",
        EGRESS_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &egress,
    ]));
    out
}

/// The commands that undo [`install`] and the jumps to its chains.
pub fn clean() -> Vec<Vec<String>> {
    vec![
        nat(&["-D", "PREROUTING", "-p", "tcp", "-j", INGRESS_CHAIN]),
        nat(&["-D", "OUTPUT", "-p", "tcp", "-j", EGRESS_CHAIN]),
        nat(&["-F", INGRESS_CHAIN]),
        nat(&["-F", EGRESS_CHAIN]),
        nat(&["-X", INGRESS_CHAIN]),
        nat(&["-X", EGRESS_CHAIN]),
    ]
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, InitError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_app_mesh_defaults() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(
            (s.ingress_port, s.egress_port, s.ignore_uid),
            (15000, 15001, 1337)
        );
        assert!(s.app_ports.is_empty());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = settings(&[("APPMESH_APP_PORTS", "80,x")]).expect_err("bad port");
        assert!(e.to_string().starts_with("APPMESH_APP_PORTS"), "{e}");
        let e = settings(&[("APPMESH_EGRESS_IGNORED_IP", "10.0.0.0/40")]).expect_err("bad cidr");
        assert!(
            e.to_string().starts_with("APPMESH_EGRESS_IGNORED_IP"),
            "{e}"
        );
    }

    #[test]
    fn many_ports_split_into_multiport_sized_rules() {
        let many: Vec<String> = (8000..8020).map(|p| p.to_string()).collect();
        let s = settings(&[("APPMESH_APP_PORTS", &many.join(","))]).expect("settings");
        let rules = install(&s, Family::V4);
        let ingress: Vec<_> = rules
            .iter()
            .filter(|r| r.contains(&INGRESS_CHAIN.to_string()) && r.contains(&"-A".to_string()))
            .collect();
        assert_eq!(ingress.len(), 2);
    }

    #[test]
    fn rules_follow_proxy_init() {
        let s = settings(&[
            ("APPMESH_APP_PORTS", "8080, 9090"),
            ("APPMESH_EGRESS_IGNORED_PORTS", "22"),
            ("APPMESH_EGRESS_IGNORED_IP", "169.254.169.254,fd00::/8"),
        ])
        .expect("settings");
        let v4: Vec<String> = install(&s, Family::V4)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(v4.contains(&"-t nat -A TRELLIS_INGRESS -p tcp -m multiport --dports 8080,9090 -j REDIRECT --to-ports 15000".into()));
        assert!(v4.contains(&"-t nat -A TRELLIS_EGRESS -d 169.254.169.254/32 -j RETURN".into()));
        assert!(!v4.iter().any(|c| c.contains("fd00::")));
        assert_eq!(
            v4.last().map(String::as_str),
            Some("-t nat -A TRELLIS_EGRESS -p tcp -j REDIRECT --to-ports 15001")
        );
        let v6: Vec<String> = install(&s, Family::V6)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(v6.contains(&"-t nat -A TRELLIS_EGRESS -d fd00::/8 -j RETURN".into()));
        assert!(v6.contains(&"-t nat -A TRELLIS_EGRESS -d ::1/128 -j RETURN".into()));
    }
}
