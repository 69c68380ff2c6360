//! TEMP STUB for type checking; replaced by the router branch.
#![allow(unused)]
use crate::config::ConfigError;
use std::sync::Arc;
use std::time::Duration;
use xds_protos::envoy::config::route::v3::RouteConfiguration;
#[derive(Debug)]
pub struct RouteTable;
impl RouteTable {
    pub fn compile(rc: &RouteConfiguration) -> Result<RouteTable, ConfigError> {
        todo!()
    }
    pub fn find<'a>(&'a self, host: &str, req: &http::request::Parts) -> Option<Matched<'a>> {
        todo!()
    }
}
pub struct VirtualHost;
pub struct Route {
    pub action: Action,
}
pub struct Matched<'a> {
    pub virtual_host: &'a VirtualHost,
    pub route: &'a Route,
}
impl Matched<'_> {
    pub fn request_headers(&self, h: &mut http::HeaderMap) {}
    pub fn response_headers(&self, h: &mut http::HeaderMap) {}
}
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}
pub struct Forward {
    pub retry_policy: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
    pub grpc_timeout_header_max: Option<Duration>,
}
impl Forward {
    pub fn cluster_for(&self, h: &http::HeaderMap, r: u64) -> Option<Arc<str>> {
        todo!()
    }
    pub fn rewrite_path(&self, m: &Matched<'_>, pq: &str) -> Option<String> {
        todo!()
    }
    pub fn rewrite_host(&self, host: &str, c: &crate::upstream::Cluster) -> Option<String> {
        todo!()
    }
}
pub struct Redirect;
impl Redirect {
    pub fn location(&self, scheme: &str, host: &str, pq: &str) -> (http::StatusCode, String) {
        todo!()
    }
}
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
}
pub struct RetryPolicy {
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
}
impl RetryPolicy {
    pub fn retriable_response(&self, s: u16, g: Option<u32>) -> bool {
        todo!()
    }
    pub fn retriable_connect_failure(&self) -> bool {
        todo!()
    }
    pub fn retriable_reset(&self) -> bool {
        todo!()
    }
    pub fn retriable_timeout(&self) -> bool {
        todo!()
    }
    pub fn backoff(&self, attempt: u32, r: u64) -> Duration {
        todo!()
    }
}
