//! Envoy `Listener` protos → [`ListenerConfig`]: an address and filter chains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use xds_protos::envoy::config::listener::v3::{
    filter, listener_filter, FilterChain, FilterChainMatch, Listener,
};
use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use xds_protos::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use xds_protos::type_url;

use super::address::{bind_address, socket_address};
use super::connection_limit::{ConnectionLimitConfig, TYPE_URL as CONNECTION_LIMIT};
use super::hcm::HcmConfig;
use super::listener_filters::ListenerFilters;
use super::tcp_proxy::TcpProxyConfig;
use super::{duration, ConfigError};
use crate::tls::ServerTls;

const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: Arc<str>,
    pub address: SocketAddr,
    /// `socket_address.ipv4_compat`: an IPv6 socket also takes IPv4
    /// connections (not `IPV6_V6ONLY`), as Envoy binds `::` with it.
    pub ipv4_compat: bool,
    pub filter_chains: Vec<ChainConfig>,
    pub default_chain: Option<ChainConfig>,
    /// Listener filters (original_dst, http_inspector); see `listener_filters`.
    pub filters: ListenerFilters,
    /// Set when the listener runs `envoy.filters.listener.tls_inspector`.
    pub tls_inspector: Option<InspectorConfig>,
    pub proto: Listener,
    pub fingerprint: Vec<u8>,
}

#[derive(Debug)]
pub struct ChainConfig {
    pub matcher: ChainMatch,
    pub terminal: Terminal,
    /// The chain's `DownstreamTlsContext`: TLS is terminated before the terminal filter.
    pub tls: Option<Arc<ServerTls>>,
    /// `envoy.filters.network.connection_limit` ahead of the terminal filter.
    pub connection_limit: Option<ConnectionLimitConfig>,
    /// The App Mesh virtual service a TCP chain carries connections to
    /// (`virtual_service` in the chain's `trellis.appmesh` metadata), as a
    /// route names it for HTTP.
    pub appmesh_service: Option<Arc<str>>,
}

/// How long the TLS inspector waits for a ClientHello, and what happens then.
#[derive(Debug, Clone, Copy)]
pub struct InspectorConfig {
    /// `None`: `listener_filters_timeout: 0s`, wait as long as the peer.
    pub timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: on timeout, carry on as
    /// `raw_buffer` instead of closing.
    pub continue_on_timeout: bool,
}

/// What a connection that picked this chain is handed to.
#[derive(Debug, Clone)]
pub enum Terminal {
    Http(Arc<HcmConfig>),
    Tcp(Arc<TcpProxyConfig>),
}

/// The filter chain match criteria. Fields for TLS (SNI, ALPN) are parsed now so
/// the listener path selects chains on them as soon as TLS inspection exists.
#[derive(Debug, Default, Clone)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
}

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Default)]
pub struct ConnectionFacts<'a> {
    pub destination_port: u16,
    pub server_name: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [&'a str],
}

impl ChainMatch {
    fn compile(m: Option<&FilterChainMatch>) -> Result<ChainMatch, ConfigError> {
        let Some(m) = m else {
            return Ok(ChainMatch::default());
        };
        let unsupported = |field: &str| {
            Err(ConfigError::new(
                field,
                "this filter chain match criterion is not supported by trellis yet",
            ))
        };
        if !m.prefix_ranges.is_empty() {
            return unsupported("prefix_ranges");
        }
        if !m.source_prefix_ranges.is_empty() || !m.direct_source_prefix_ranges.is_empty() {
            return unsupported("source_prefix_ranges");
        }
        if !m.source_ports.is_empty() {
            return unsupported("source_ports");
        }
        if m.source_type != 0 {
            return unsupported("source_type");
        }
        let destination_port = match m.destination_port {
            Some(p) => Some(
                u16::try_from(p)
                    .map_err(|_| ConfigError::new("destination_port", "port out of range"))?,
            ),
            None => None,
        };
        Ok(ChainMatch {
            destination_port,
            server_names: m
                .server_names
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            transport_protocol: (!m.transport_protocol.is_empty())
                .then(|| m.transport_protocol.clone()),
            application_protocols: m.application_protocols.clone(),
        })
    }

    /// How specific a match is, for Envoy's "most specific chain wins" order:
    /// destination port, then server name, then transport, then ALPN.
    fn matches(&self, c: &ConnectionFacts<'_>) -> Option<(bool, usize, bool, bool)> {
        if let Some(p) = self.destination_port {
            if p != c.destination_port {
                return None;
            }
        }
        let mut sni_rank = 0;
        if !self.server_names.is_empty() {
            let sni = c.server_name?;
            sni_rank = self
                .server_names
                .iter()
                .filter_map(|n| server_name_rank(n, sni))
                .max()?;
        }
        if let Some(t) = &self.transport_protocol {
            if t != c.transport_protocol {
                return None;
            }
        }
        if !self.application_protocols.is_empty()
            && !self
                .application_protocols
                .iter()
                .any(|p| c.application_protocols.contains(&p.as_str()))
        {
            return None;
        }
        Some((
            self.destination_port.is_some(),
            sni_rank,
            self.transport_protocol.is_some(),
            !self.application_protocols.is_empty(),
        ))
    }
}

/// Exact names outrank wildcards; longer wildcards outrank shorter ones.
fn server_name_rank(pattern: &str, sni: &str) -> Option<usize> {
    if pattern == sni {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?;
    (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len())
}

impl ListenerConfig {
    pub fn compile(l: &Listener) -> Result<ListenerConfig, ConfigError> {
        if l.name.is_empty() {
            return Err(ConfigError::new("name", "a listener needs a name"));
        }
        let address = bind_address(l.address.as_ref(), "address")?;
        let ipv4_compat = socket_address(l.address.as_ref(), "address")?.ipv4_compat;
        let filters = ListenerFilters::compile(l)?;
        let tls_inspector = compile_listener_filters(l)?;
        if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            return Err(ConfigError::new(
                "filter_chains",
                "at least one filter chain is required",
            ));
        }
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, fc)| compile_chain(fc).map_err(|e| e.at(format!("filter_chains[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let default_chain = match &l.default_filter_chain {
            Some(fc) => Some(compile_chain(fc).map_err(|e| e.at("default_filter_chain"))?),
            None => None,
        };
        Ok(ListenerConfig {
            name: Arc::from(l.name.as_str()),
            address,
            ipv4_compat,
            filter_chains,
            default_chain,
            filters,
            tls_inspector,
            proto: l.clone(),
            fingerprint: l.encode_to_vec(),
        })
    }

    /// Envoy's selection: the most specific matching chain, else the default.
    pub fn select(&self, facts: &ConnectionFacts<'_>) -> Option<&ChainConfig> {
        self.filter_chains
            .iter()
            .filter_map(|c| c.matcher.matches(facts).map(|rank| (rank, c)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, c)| c)
            .or(self.default_chain.as_ref())
    }
}

/// Only `tls_inspector` is implemented; it is what SNI, ALPN and
/// transport protocol matching need.
fn compile_listener_filters(l: &Listener) -> Result<Option<InspectorConfig>, ConfigError> {
    let mut inspector = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let path = format!("listener_filters[{i}]");
        let url = match &f.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.typed_config"),
                    "typed_config is required",
                ))
            }
        };
        // original_dst and http_inspector: see `listener_filters`.
        if url == super::listener_filters::ORIGINAL_DST
            || url == super::listener_filters::HTTP_INSPECTOR
        {
            continue;
        }
        if url != TLS_INSPECTOR {
            return Err(ConfigError::new(
                format!("{path}.typed_config"),
                format!("listener filter {url} is not supported by trellis yet"),
            ));
        }
        if f.filter_disabled.is_some() {
            return Err(ConfigError::new(
                format!("{path}.filter_disabled"),
                "not supported by trellis",
            ));
        }
        inspector = true;
    }
    if !inspector {
        return Ok(None);
    }
    Ok(Some(InspectorConfig {
        timeout: duration::timeout(
            l.listener_filters_timeout.as_ref(),
            Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
            "listener_filters_timeout",
        )?,
        continue_on_timeout: l.continue_on_listener_filters_timeout,
    }))
}

fn compile_chain(fc: &FilterChain) -> Result<ChainConfig, ConfigError> {
    let matcher = ChainMatch::compile(fc.filter_chain_match.as_ref())
        .map_err(|e| e.at("filter_chain_match"))?;
    // Absent: trellis's default bound; `0s`: none, as in Envoy.
    let handshake_timeout = duration::timeout(
        fc.transport_socket_connect_timeout.as_ref(),
        Some(crate::tls::DEFAULT_HANDSHAKE_TIMEOUT),
        "transport_socket_connect_timeout",
    )?;
    let tls =
        crate::tls::downstream_transport_socket(fc.transport_socket.as_ref(), handshake_timeout)
            .map_err(|e| e.at("transport_socket"))?;
    let Some((last, rest)) = fc.filters.split_last() else {
        return Err(ConfigError::new(
            "filters",
            "a filter chain needs a terminal filter",
        ));
    };
    let mut connection_limit = None;
    for (i, f) in rest.iter().enumerate() {
        let any = match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) if any.type_url == CONNECTION_LIMIT => any,
            _ => {
                return Err(ConfigError::new(
                    format!("filters[{i}]"),
                    format!(
                    "network filter '{}' is not supported by trellis before the terminal filter",
                    f.name
                ),
                ))
            }
        };
        let path = format!("filters[{i}].typed_config");
        if connection_limit.is_some() {
            return Err(ConfigError::new(
                path,
                "only one connection_limit filter per chain is supported by trellis",
            ));
        }
        let c = xds_protos::any::unpack(any).map_err(|e| ConfigError::new(path.clone(), e))?;
        connection_limit = Some(ConnectionLimitConfig::compile(&c).map_err(|e| e.at(&path))?);
    }
    let i = fc.filters.len() - 1;
    let path = format!("filters[{i}].typed_config");
    let any = match &last.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(ConfigError::new(path, "typed_config is required")),
    };
    let terminal = match any.type_url.as_str() {
        type_url::HTTP_CONNECTION_MANAGER => {
            let hcm: HttpConnectionManager =
                xds_protos::any::unpack(any).map_err(|e| ConfigError::new(path.clone(), e))?;
            Terminal::Http(Arc::new(HcmConfig::compile(&hcm).map_err(|e| e.at(&path))?))
        }
        type_url::TCP_PROXY => {
            let tcp: TcpProxy =
                xds_protos::any::unpack(any).map_err(|e| ConfigError::new(path.clone(), e))?;
            Terminal::Tcp(Arc::new(
                TcpProxyConfig::compile(&tcp).map_err(|e| e.at(&path))?,
            ))
        }
        other => {
            return Err(ConfigError::new(
                path,
                format!("network filter {other} is not supported by trellis"),
            ))
        }
    };
    Ok(ChainConfig {
        matcher,
        terminal,
        tls,
        connection_limit,
        appmesh_service: crate::stats::appmesh::metadata_name(
            fc.metadata.as_ref(),
            "virtual_service",
        ),
    })
}
