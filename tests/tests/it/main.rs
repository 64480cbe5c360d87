//! lamina's integration tests, one module per area.
