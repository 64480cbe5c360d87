//! lamina's integration tests, one module per area.
mod registry_client;
