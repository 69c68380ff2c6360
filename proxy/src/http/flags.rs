//! Envoy's response flags, kept per request for access logs and stats.

use std::fmt;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $code:literal;)*) => {
        impl ResponseFlags {
            $(pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
            const ALL: &'static [(ResponseFlags, &'static str)] = &[$((ResponseFlags::$name, $code)),*];
        }
    };
}

// Listed in the order `%RESPONSE_FLAGS%` prints them. Envoy prints flags in
// the order they were set, and it sets URX before the failure that ended the
// last try: `URX,UF`, `URX,UT`.
flags! {
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 4, "URX";
    NO_ROUTE_FOUND = 0, "NR";
    NO_HEALTHY_UPSTREAM = 1, "UH";
    UPSTREAM_CONNECTION_FAILURE = 2, "UF";
    UPSTREAM_REQUEST_TIMEOUT = 3, "UT";
    UPSTREAM_CONNECTION_TERMINATION = 5, "UC";
    DOWNSTREAM_CONNECTION_TERMINATION = 6, "DC";
    UPSTREAM_REMOTE_RESET = 7, "UR";
    NO_CLUSTER_FOUND = 8, "NC";
    STREAM_IDLE_TIMEOUT = 9, "SI";
    UPSTREAM_OVERFLOW = 10, "UO";
    DOWNSTREAM_PROTOCOL_ERROR = 11, "DPE";
    UPSTREAM_PROTOCOL_ERROR = 12, "UPE";
    DURATION_TIMEOUT = 13, "DT";
    DELAY_INJECTED = 16, "DI";
    FAULT_INJECTED = 14, "FI";
    RATE_LIMITED = 15, "RL";
}

impl ResponseFlags {
    pub fn set(&mut self, f: ResponseFlags) {
        self.0 |= f.0;
    }

    pub fn contains(self, f: ResponseFlags) -> bool {
        self.0 & f.0 == f.0 && f.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when empty, else the codes joined by commas, as `%RESPONSE_FLAGS%` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Self::ALL {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_envoy() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.to_string(), "-");
        f.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        f.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(f.to_string(), "URX,UF");
        let mut f = ResponseFlags::default();
        f.set(ResponseFlags::FAULT_INJECTED);
        f.set(ResponseFlags::DELAY_INJECTED);
        assert_eq!(f.to_string(), "DI,FI");
    }
}
