//! The nftables backend: object model, optimizer (IR → model) and text writer.
pub mod build;
pub mod model;
pub mod render;
