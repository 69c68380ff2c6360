//! Differential testing against stock Envoy.
