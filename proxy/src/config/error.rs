use std::fmt;

/// A config value trellis cannot accept, with the field path that names it
/// (`static_resources.listeners[0].address.socket_address.port_value`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// Prefixes the path with the field that contains it, as errors bubble up.
    pub fn at(mut self, parent: impl fmt::Display) -> Self {
        self.path = if self.path.is_empty() {
            parent.to_string()
        } else if self.path.starts_with('[') {
            format!("{parent}{}", self.path)
        } else {
            format!("{parent}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compose_outward() {
        let e = ConfigError::new("regex", "bad")
            .at("match.safe_regex")
            .at("routes[2]")
            .at("virtual_hosts[0]");
        assert_eq!(
            e.to_string(),
            "virtual_hosts[0].routes[2].match.safe_regex.regex: bad"
        );
        let e = ConfigError::new("[3]", "bad").at("domains");
        assert_eq!(e.path, "domains[3]");
    }
}
