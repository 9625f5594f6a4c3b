//! The nftables backend: object model, optimizer (IR → model) and text writer.
pub mod build;
pub mod delta;
pub mod model;
pub mod render;
