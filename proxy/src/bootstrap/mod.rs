//! Reading an Envoy v3 bootstrap (YAML or JSON) and checking it against the supported subset.
