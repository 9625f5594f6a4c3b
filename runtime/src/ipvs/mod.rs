//! IPVS mode's kernel side: the IPVS generic-netlink client ([`genl`]), svcc's dummy
//! interface over rtnetlink ([`link`]), the sysctls ([`sysctl`]) and the applier that programs
//! a [`Desired`] state incrementally and in a safe order ([`applier`]).

pub mod applier;
pub mod genl;
pub mod link;
pub mod model;
mod sock;
pub mod sysctl;

pub use applier::{Desired, DestKey, IpvsApplier, IpvsError, IpvsReport, WantedService};
pub use genl::{Dest, GenlError, Ipvs, Listed, SvcKey, SvcParams, Timeouts};
pub use link::{Links, DUMMY};
pub use model::{desired, local_addrs};
