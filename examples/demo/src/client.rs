//! One pooled HTTP/1.1 client for the traffic generator, the frontend and
//! the admin scrapes.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct Http(Client<HttpConnector, Empty<Bytes>>);

impl Http {
    pub fn new() -> Http {
        Http(Client::builder(TokioExecutor::new()).build_http())
    }

    /// GET with an optional Host header; status and body, or why it failed.
    pub async fn get(&self, url: &str, host: Option<&str>) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::get(url);
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        let req = req.body(Empty::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.0.request(req)).await??;
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await??
            .to_bytes();
        Ok((status, body))
    }
}
