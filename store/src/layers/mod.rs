//! Unpacked read-only layers, one directory per chain id, in overlayfs format.

pub mod unpack;
