//! The Palaver peer: identity on disk and the command line; the daemon, its JSON-RPC socket and
//! the terminal UI grow here.

pub mod access;
pub mod cli;
pub mod daemon;
#[cfg(feature = "rendezvous-server")]
pub mod demo;
pub mod files;
pub mod home;
pub mod localtime;
pub mod printable;
#[cfg(feature = "rendezvous-server")]
pub mod reference;
pub mod rpc;
pub mod store;
pub mod tui;
