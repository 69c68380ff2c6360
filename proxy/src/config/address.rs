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
