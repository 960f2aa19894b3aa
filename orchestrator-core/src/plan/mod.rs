//! Plan files: a TOML description of a run (placeholder, being written).
