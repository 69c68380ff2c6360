//! Our own HTTP/1.1 codec: message heads, body framing, and the upstream
//! client connection built on them.

pub mod body;
pub mod client;
pub mod head;
pub mod server;
pub mod write;
