//! HELP text for every Prometheus family the proxy emits. Envoy prints none;
//! dashboards and `promtool check metrics` are better with it.

/// The HELP line of `family` (the sanitized Prometheus name). A unit test
/// renders every stat block and fails on a family missing here.
pub fn help(family: &str) -> &'static str {
    match family.strip_prefix("envoy_").unwrap_or(family) {
        // Clusters
        "cluster_upstream_rq_total" => {
            "Requests sent upstream by this cluster, counting each retry."
        }
        "cluster_upstream_rq_active" => "Requests to this cluster now waiting for their response.",
        "cluster_upstream_rq_pending_active" => {
            "Requests to this cluster waiting for a connection."
        }
        "cluster_upstream_rq_timeout" => "Requests to this cluster that hit the route timeout.",
        "cluster_upstream_rq_per_try_timeout" => "Upstream attempts that hit the per-try timeout.",
        "cluster_upstream_rq_retry" => "Retries sent to this cluster.",
        "cluster_upstream_rq_retry_success" => "Retried requests that finally succeeded.",
        "cluster_upstream_rq_pending_overflow" => {
            "Requests refused because the cluster's circuit breaker was open."
        }
        "cluster_upstream_rq_rx_reset" => "Upstream requests reset by the upstream.",
        "cluster_upstream_rq_active_overflow" => {
            "Requests refused because the cluster's max_requests breaker was reached."
        }
        "cluster_upstream_rq_xx" => {
            "Upstream responses by status class (envoy_response_code_class)."
        }
        "cluster_upstream_rq" => "Upstream responses by status code (envoy_response_code).",
        "cluster_upstream_rq_time" => {
            "Upstream request time, headers sent to response headers, in milliseconds."
        }
        "cluster_upstream_cx_total" => "Connections opened to this cluster's endpoints.",
        "cluster_upstream_cx_http1_total" => "HTTP/1.1 connections opened to this cluster.",
        "cluster_upstream_cx_http2_total" => "HTTP/2 connections opened to this cluster.",
        "cluster_upstream_cx_active" => "Open connections to this cluster's endpoints.",
        "cluster_upstream_cx_connect_fail" => {
            "Failed connection attempts to this cluster's endpoints."
        }
        "cluster_upstream_cx_connect_timeout" => {
            "Connection attempts to this cluster that timed out."
        }
        "cluster_upstream_cx_destroy" => "Connections to this cluster that were closed.",
        "cluster_membership_healthy" => "Healthy endpoints in this cluster.",
        "cluster_membership_total" => "Endpoints in this cluster, healthy or not.",
        "cluster_outlier_detection_ejections_active" => {
            "Endpoints of this cluster now ejected by outlier detection."
        }
        "cluster_upstream_cx_overflow" => {
            "Connections refused because the cluster's max_connections breaker was open."
        }
        "cluster_upstream_rq_retry_limit_exceeded" => {
            "Requests whose last allowed try still asked for a retry."
        }
        "cluster_upstream_rq_retry_overflow" => {
            "Retries not sent because the cluster's max_retries breaker was open."
        }
        "cluster_upstream_rq_pending_total" => {
            "Requests that waited for a connection to this cluster."
        }
        "cluster_outlier_detection_ejections_enforced_total" => {
            "Endpoints ejected by outlier detection."
        }
        "cluster_outlier_detection_ejections_overflow" => {
            "Ejections skipped because max_ejection_percent was reached."
        }
        "cluster_outlier_detection_ejections_enforced_consecutive_5xx" => {
            "Ejections enforced for consecutive 5xx responses."
        }
        "cluster_outlier_detection_ejections_detected_consecutive_5xx" => {
            "Endpoints detected with consecutive 5xx responses."
        }
        "cluster_outlier_detection_ejections_enforced_consecutive_gateway_failure" => {
            "Ejections enforced for consecutive gateway failures."
        }
        "cluster_outlier_detection_ejections_detected_consecutive_gateway_failure" => {
            "Endpoints detected with consecutive gateway failures."
        }
        "cluster_ssl_handshake" => "TLS handshakes completed with this cluster's endpoints.",
        "cluster_ssl_connection_error" => {
            "TLS handshakes with this cluster that failed, other than certificate refusals."
        }
        "cluster_ssl_fail_verify_no_cert" => "Endpoints refused for presenting no certificate.",
        "cluster_ssl_fail_verify_error" => {
            "Endpoint certificates refused as expired, not yet valid or from an unknown CA."
        }
        "cluster_ssl_fail_verify_san" => {
            "Endpoint certificates refused because no subject alternative name matched."
        }
        "cluster_ssl_no_certificate" => "TLS handshakes where the endpoint sent no certificate.",
        "cluster_ssl_session_reused" => "TLS handshakes with this cluster that resumed a session.",
        "cluster_ssl_versions" => {
            "TLS handshakes with this cluster, by protocol version (envoy_ssl_version)."
        }
        "cluster_ssl_ciphers" => {
            "TLS handshakes with this cluster, by cipher suite (cipher_suite)."
        }
        "cluster_ssl_curves" => {
            "TLS handshakes with this cluster, by key exchange group (envoy_ssl_curve)."
        }
        "cluster_health_check_attempt" => "Active health checks sent.",
        "cluster_health_check_success" => "Active health checks that passed.",
        "cluster_health_check_failure" => "Active health checks that failed.",
        "cluster_health_check_network_failure" => "Active health checks that failed to connect.",
        "cluster_health_check_healthy" => "Endpoints passing active health checks.",
        "cluster_circuit_breakers_default_cx_open" => "1 while max_connections is reached.",
        "cluster_circuit_breakers_default_cx_pool_open" => {
            "1 while max_connection_pools is reached (always 0: not limited by trellis)."
        }
        "cluster_circuit_breakers_default_rq_open" => "1 while max_requests is reached.",
        "cluster_circuit_breakers_default_rq_pending_open" => {
            "1 while max_pending_requests is reached."
        }
        "cluster_circuit_breakers_default_rq_retry_open" => {
            "1 while max_retries (or the retry budget) is reached."
        }
        // HTTP filters
        "http_fault_delays_injected" => "Requests delayed by the fault filter.",
        "http_fault_aborts_injected" => "Requests aborted by the fault filter.",
        "http_fault_active_faults" => "Faults in progress.",
        "http_fault_faults_overflow" => {
            "Faults not injected because max_active_faults was reached."
        }
        "http_http_local_rate_limit_enabled" => "Requests the local rate limit was enabled for.",
        "http_http_local_rate_limit_enforced" => "Requests the local rate limit was enforced for.",
        "http_http_local_rate_limit_rate_limited" => "Requests over the local rate limit.",
        "http_http_local_rate_limit_ok" => "Requests within the local rate limit.",
        // HTTP connection managers
        "http_downstream_rq_total" => "Requests received by this connection manager.",
        "http_downstream_rq_http1_total" => "HTTP/1.1 requests received.",
        "http_downstream_rq_http2_total" => "HTTP/2 requests received.",
        "http_downstream_rq_active" => "Requests in progress.",
        "http_downstream_rq_xx" => {
            "Responses sent downstream by status class (envoy_response_code_class)."
        }
        "http_downstream_rq" => "Responses sent downstream by status code (envoy_response_code).",
        "http_downstream_rq_time" => {
            "Request time, first byte received to last byte sent, in milliseconds."
        }
        "http_downstream_rq_timeout" => "Requests closed because the request timeout fired.",
        "http_downstream_rq_idle_timeout" => {
            "Requests closed because nothing moved on them for the stream idle timeout."
        }
        "http_downstream_cx_idle_timeout" => {
            "Downstream connections closed after the connection idle timeout."
        }
        "http_downstream_rq_ws_on_non_ws_route" => {
            "Upgrade requests refused on routes without WebSocket."
        }
        "http_downstream_rq_header_timeout" => {
            "Requests closed with 408 because their head did not arrive within request_headers_timeout."
        }
        "http_downstream_cx_max_requests_reached" => {
            "Connections closed after max_requests_per_connection requests."
        }
        "http_downstream_rq_too_many_premature_resets" => {
            "HTTP/2 connections closed for resetting too many of their streams (rapid reset)."
        }
        "http_downstream_cx_protocol_error" => {
            "Connections closed for an HTTP protocol error (a GOAWAY with an error code)."
        }
        "http_downstream_rq_overload_close" => {
            "Requests answered 503 by the stop_accepting_requests overload action."
        }
        "http_downstream_cx_total" => "Downstream connections served by this connection manager.",
        "http_downstream_cx_active" => "Downstream connections open on this connection manager.",
        "http_downstream_cx_http1_total" => "HTTP/1.1 downstream connections.",
        "http_downstream_cx_http2_total" => "HTTP/2 downstream connections.",
        "http_downstream_cx_upgrades_total" => "Connections upgraded (WebSocket).",
        "http_no_route" => "Requests that matched no route (404).",
        "http_no_cluster" => "Requests whose route named a cluster that does not exist.",
        "http_rq_redirect" => "Requests answered with a route redirect.",
        "http_rq_direct_response" => "Requests answered with a route's direct response.",
        // Listeners and TCP proxies
        "listener_downstream_cx_total" => "Connections accepted by this listener.",
        "listener_downstream_cx_active" => "Connections open on this listener.",
        "listener_no_filter_chain_match" => {
            "Connections that matched no filter chain and were closed."
        }
        "listener_ssl_handshake" => "TLS handshakes completed on this listener.",
        "listener_ssl_connection_error" => {
            "TLS handshakes that failed on this listener, other than certificate refusals."
        }
        "listener_ssl_fail_verify_no_cert" => {
            "Clients refused for presenting no certificate where one is required."
        }
        "listener_ssl_fail_verify_error" => {
            "Client certificates refused as expired, not yet valid or from an unknown CA."
        }
        "listener_ssl_fail_verify_san" => {
            "Client certificates refused because no subject alternative name matched."
        }
        "listener_ssl_no_certificate" => "TLS handshakes where the client sent no certificate.",
        "listener_ssl_session_reused" => "TLS handshakes that resumed an earlier session.",
        "listener_ssl_versions" => {
            "TLS handshakes completed, by protocol version (envoy_ssl_version)."
        }
        "listener_ssl_ciphers" => "TLS handshakes completed, by cipher suite (envoy_ssl_cipher).",
        "listener_ssl_curves" => {
            "TLS handshakes completed, by key exchange group (envoy_ssl_curve)."
        }
        "listener_downstream_global_cx_overflow" => {
            "Connections closed at once because the global downstream connection limit was reached."
        }
        "listener_downstream_cx_overload_reject" => {
            "Connections closed at once by the reject_incoming_connections overload action."
        }
        "listener_downstream_cx_transport_socket_connect_timeout" => {
            "TLS handshakes not finished within the filter chain's handshake timeout."
        }
        "connection_limit_active_connections" => {
            "Connections open on filter chains with this connection_limit prefix."
        }
        "connection_limit_limited_connections" => {
            "Connections closed because the filter chain's connection_limit was reached."
        }
        "tcp_downstream_cx_total" => "Connections handled by this TCP proxy.",
        "tcp_downstream_cx_no_route" => "TCP proxy connections with no cluster to go to.",
        // HTTP/2 codec, downstream
        "http2_rx_reset" => "RST_STREAM frames received from downstream HTTP/2 clients.",
        "http2_tx_reset" => "RST_STREAM frames sent to downstream HTTP/2 clients.",
        "http2_header_overflow" => {
            "HTTP/2 requests reset for carrying more than max_headers_count headers."
        }
        "http2_header_list_size_too_large" => {
            "HTTP/2 requests reset for headers over max_request_headers_kb."
        }
        "http2_outbound_control_flood" => {
            "HTTP/2 connections closed for a flood of PING or SETTINGS frames."
        }
        // Overload manager
        "overload_envoy_resource_monitors_fixed_heap_pressure" => {
            "Resident memory as a percentage of fixed_heap.max_heap_size_bytes."
        }
        "overload_envoy_resource_monitors_global_downstream_max_connections_pressure" => {
            "Downstream connections as a percentage of max_active_downstream_connections."
        }
        "overload_envoy_overload_actions_stop_accepting_connections_active" => {
            "1 while the proxy leaves new connections in the backlog (overload)."
        }
        "overload_envoy_overload_actions_stop_accepting_connections_scale_percent" => {
            "100 while stop_accepting_connections is active."
        }
        "overload_envoy_overload_actions_reject_incoming_connections_active" => {
            "1 while the proxy closes new connections at once (overload)."
        }
        "overload_envoy_overload_actions_reject_incoming_connections_scale_percent" => {
            "100 while reject_incoming_connections is active."
        }
        "overload_envoy_overload_actions_stop_accepting_requests_active" => {
            "1 while the proxy answers new requests 503 (overload)."
        }
        "overload_envoy_overload_actions_stop_accepting_requests_scale_percent" => {
            "100 while stop_accepting_requests is active."
        }
        // Access logs
        "access_logs_file_write_buffered" => "Access log lines queued for writing.",
        "access_logs_file_write_completed" => "Access log lines written.",
        "access_logs_file_write_failed" => "Access log writes that failed.",
        "access_logs_file_write_dropped" => {
            "Access log lines dropped because the writer's queue was full."
        }
        "access_logs_file_reopen_failed" => {
            "Access log files that could not be reopened after SIGUSR1."
        }
        // Tracing
        "tracing_opentelemetry_spans_sent" => "Spans exported to the OTLP collector.",
        "tracing_opentelemetry_spans_dropped" => {
            "Spans dropped because the export queue was full or the collector failed."
        }
        // xDS
        "control_plane_connected_state" => "1 while the ADS stream to the control plane is up.",
        "cluster_manager_cds_update_attempt" => "CDS updates received.",
        "cluster_manager_cds_update_success" => "CDS updates applied.",
        "cluster_manager_cds_update_rejected" => "CDS updates rejected (NACKed).",
        "cluster_manager_cds_version" => "Hash of the CDS version in force.",
        "cluster_manager_cds_update_duration" => {
            "Milliseconds to validate, compile and swap in an accepted CDS update."
        }
        "cluster_update_attempt" => "EDS updates received for this cluster.",
        "cluster_update_success" => "EDS updates applied to this cluster.",
        "cluster_update_rejected" => "EDS updates of this cluster rejected (NACKed).",
        "cluster_version" => "Hash of the EDS version in force for this cluster.",
        "cluster_update_duration" => {
            "Milliseconds to validate, compile and swap in an accepted EDS update of this cluster."
        }
        "listener_manager_lds_update_attempt" => "LDS updates received.",
        "listener_manager_lds_update_success" => "LDS updates applied.",
        "listener_manager_lds_update_rejected" => "LDS updates rejected (NACKed).",
        "listener_manager_lds_version" => "Hash of the LDS version in force.",
        "listener_manager_lds_update_duration" => {
            "Milliseconds to validate, compile and swap in an accepted LDS update."
        }
        "http_rds_update_attempt" => "RDS updates received for this route config.",
        "http_rds_update_success" => "RDS updates of this route config applied.",
        "http_rds_update_rejected" => "RDS updates of this route config rejected (NACKed).",
        "http_rds_version" => "Hash of the RDS version in force for this route config.",
        "http_rds_update_duration" => {
            "Milliseconds to validate, compile and swap in an accepted RDS update."
        }
        // App Mesh peers
        "appmesh_downstream_rq_total" => {
            "Requests answered to each calling virtual node (appmesh_downstream_*)."
        }
        "appmesh_downstream_rq_xx" => "Answers to each calling virtual node, by status class.",
        "appmesh_downstream_rq" => "Answers to each calling virtual node, by status code.",
        "appmesh_downstream_rq_time" => {
            "Time to response headers for each calling virtual node, in milliseconds."
        }
        "appmesh_upstream_rq_total" => {
            "Requests sent to each target virtual service and node (appmesh_target_*)."
        }
        "appmesh_upstream_rq_xx" => "Answers from each target, by status class.",
        "appmesh_upstream_rq" => "Answers from each target, by status code.",
        "appmesh_upstream_rq_time" => {
            "Time upstream, retries included, for each target, in milliseconds."
        }
        // Server
        "server_live" => "1 once the initial configuration is applied.",
        "server_uptime" => "Seconds since the proxy started.",
        "server_concurrency" => "Worker threads.",
        "server_state" => "0 live, 1 draining, 2 pre-initializing, 3 initializing.",
        "server_memory_allocated" => "Resident memory of the proxy process, in bytes.",
        _ => "trellis stat without a description.",
    }
}
