//! lamina's integration tests, one module per area.
mod registry_client;
mod service_containerd;
mod service_snapshotter;
