//! The three demo services. They know nothing of the mesh: the frontend
//! calls `backend.demo.local` through its sidecar's egress port, as an App
//! Mesh app called its backends through Envoy.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::client::Http;

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    r
}

/// Serves `handler` on 127.0.0.1:`port` until the process ends.
async fn serve<F, Fut>(port: u16, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

/// A backend version: answers who it is.
pub async fn backend(port: u16, version: &'static str) -> anyhow::Result<()> {
    serve(port, move |_req| async move {
        json_reply(
            StatusCode::OK,
            json!({"service": "backend.demo.local", "version": version}),
        )
    })
    .await
}

/// The frontend: one call to the backend per request, through the sidecar.
pub async fn frontend(port: u16, egress: u16, http: Http) -> anyhow::Result<()> {
    serve(port, move |req: Request<Incoming>| {
        let http = http.clone();
        async move {
            let path = req.uri().path().to_string();
            let url = format!("http://127.0.0.1:{egress}{path}");
            match http.get(&url, Some("backend.demo.local")).await {
                Ok((status, body)) if status.is_success() => {
                    let backend: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    json_reply(
                        StatusCode::OK,
                        json!({"service": "frontend.demo.local", "backend": backend}),
                    )
                }
                Ok((status, body)) => json_reply(
                    StatusCode::BAD_GATEWAY,
                    json!({"error": format!("backend answered {status}"),
                           "detail": String::from_utf8_lossy(&body)}),
                ),
                Err(e) => json_reply(
                    StatusCode::BAD_GATEWAY,
                    json!({"error": format!("backend unreachable: {e}")}),
                ),
            }
        }
    })
    .await
}
