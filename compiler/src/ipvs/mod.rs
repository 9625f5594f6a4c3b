//! The IPVS backend: virtual servers for every frontend, the VIPs for svcc's dummy
//! interface, and a small nftables table for what IPVS cannot do (see docs/ARCHITECTURE.md,
//! "The IPVS layout (and why)").
pub mod build;
pub mod model;
pub mod render;
