//! The end-to-end harness: processes, ports, upstreams and clients on loopback.
