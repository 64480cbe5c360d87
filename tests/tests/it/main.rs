//! lamina's integration tests, one module per area.
mod registry_client;
mod registry_pull;
mod archive_bad;
mod archive_load;
mod archive_roundtrip;
mod service_containerd;
mod overlay_compare;
mod service_snapshotter;
mod store_commands;
mod store_gc;
mod store_concurrency;
mod store_crash;
mod store_schema;
mod unpack_hostile;
