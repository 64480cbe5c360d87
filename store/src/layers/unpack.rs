//! Layer unpack: a (possibly compressed) tar stream into one layer directory.
