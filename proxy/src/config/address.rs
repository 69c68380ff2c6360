//! Envoy `Address` protos → socket addresses.

use std::net::{IpAddr, SocketAddr};

use xds_protos::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};

use super::ConfigError;

/// A socket address that may still need DNS (cluster endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The literal IP, when the host is one.
    pub fn ip(&self) -> Option<SocketAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

pub fn socket_address<'a>(
    addr: Option<&'a Address>,
    path: &str,
) -> Result<&'a SocketAddress, ConfigError> {
    match addr.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => Ok(sa),
        Some(address::Address::Pipe(_)) => Err(ConfigError::new(
            format!("{path}.pipe"),
            "unix domain sockets are not supported by trellis",
        )),
        Some(address::Address::EnvoyInternalAddress(_)) => Err(ConfigError::new(
            format!("{path}.envoy_internal_address"),
            "internal addresses are not supported by trellis",
        )),
        None => Err(ConfigError::new(path, "an address is required")),
    }
}

pub fn host_port(addr: Option<&Address>, path: &str) -> Result<HostPort, ConfigError> {
    let sa = socket_address(addr, path)?;
    let path = format!("{path}.socket_address");
    if sa.protocol != 0 {
        return Err(ConfigError::new(
            format!("{path}.protocol"),
            "only TCP is supported by trellis",
        ));
    }
    if !sa.resolver_name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.resolver_name"),
            "custom resolvers are not supported by trellis",
        ));
    }
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| ConfigError::new(format!("{path}.port_value"), "port out of range"))?,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::new(
                format!("{path}.named_port"),
                "named ports are not supported by trellis",
            ))
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.port_value"),
                "a port is required",
            ))
        }
    };
    if sa.address.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.address"),
            "an address is required",
        ));
    }
    Ok(HostPort {
        host: sa.address.clone(),
        port,
    })
}

/// Listener addresses must be IP literals: Envoy does not resolve them either.
pub fn bind_address(addr: Option<&Address>, path: &str) -> Result<SocketAddr, ConfigError> {
    let hp = host_port(addr, path)?;
    hp.ip().ok_or_else(|| {
        ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("'{}' is not an IP address", hp.host),
        )
    })
}

/// An address prefix (`CidrRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn compile(
        r: &xds_protos::envoy::config::core::v3::CidrRange,
    ) -> Result<Cidr, ConfigError> {
        let addr: IpAddr = r.address_prefix.parse().map_err(|_| {
            ConfigError::new(
                "address_prefix",
                format!("'{}' is not an IP address", r.address_prefix),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.unwrap_or(max);
        if len > max {
            return Err(ConfigError::new(
                "prefix_len",
                format!("must be at most {max}"),
            ));
        }
        Ok(Cidr {
            addr,
            len: len as u8,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), self.len),
            (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[full] & mask) == (b[full] & mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = Cidr {
            addr: "10.1.0.0".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            len: 16,
        };
        assert!(c.contains("10.1.255.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!c.contains("10.2.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        let c = Cidr {
            addr: IpAddr::from([192, 168, 0, 0]),
            len: 23,
        };
        assert!(c.contains(IpAddr::from([192, 168, 1, 9])));
        assert!(!c.contains(IpAddr::from([192, 168, 2, 9])));
    }
}
