//! Route tables: virtual hosts indexed by domain, routes with compiled matchers and actions.
